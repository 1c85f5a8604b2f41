import assert from 'node:assert/strict';
import test from 'node:test';
import { TokenBucket } from '../../src/replication/shaper';

test('token bucket: long-run rate holds for any frame size; burst is bounded; rate changes apply', () => {
  let now = 0;
  const tb = new TokenBucket(1_000_000, () => now);
  // Send 10 MB in 100 KB frames, honouring every wait: elapsed ≈ (10 MB - burst) / rate.
  let sent = 0;
  while (sent < 10_000_000) {
    now += tb.reserve(100_000);
    sent += 100_000;
  }
  assert.ok(now > 9_800 && now < 10_000, `elapsed ${now} ms`);
  // One huge frame goes into debt and waits proportionally.
  now += 10_000;
  assert.ok(Math.abs(tb.reserve(5_000_000) - (5_000_000 - 64 * 1024) / 1000) < 1);
  tb.setRate(0);
  assert.equal(tb.reserve(1e9), 0, 'unlimited');
});
