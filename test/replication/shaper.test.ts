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

/** Start `take(bytes)` and resolve with the milliseconds it waited. */
function timedTake(tb: TokenBucket, bytes: number): Promise<number> {
  const t0 = performance.now();
  return tb.take(bytes).then(() => performance.now() - t0);
}

test('token bucket: lifting the cap (offsite bandwidth unlimited) releases every sender waiting under the old cap at once', async () => {
  const tb = new TokenBucket(100_000); // 100 KB/s
  // A 1 MiB segment, then a sync chunk behind it: ~10 s and ~11 s under the cap.
  const first = timedTake(tb, 1 << 20);
  const second = timedTake(tb, 64 * 1024);
  await new Promise((r) => setTimeout(r, 200));
  tb.setRate(0);
  const waited = await Promise.all([first, second]);
  assert.ok(waited.every((ms) => ms < 1000), `senders stayed blocked ${waited.map(Math.round).join(' and ')} ms after the cap was lifted`);
  assert.equal(await timedTake(tb, 1e9).then((ms) => ms < 50), true, 'unlimited: no wait');
  // A cap set again later starts from a full bucket: nothing sent while unlimited is owed.
  tb.setRate(1_000_000);
  assert.equal(tb.reserve(64 * 1024), 0);
});

test('token bucket: a rate change recomputes what a waiting sender has left under the new rate', async () => {
  // Raised: 1 MiB at 100 KB/s owes ~9.8 s; after 200 ms at 10 MB/s what is left takes ~0.1 s.
  let tb = new TokenBucket(100_000);
  let waiting = timedTake(tb, 1 << 20);
  await new Promise((r) => setTimeout(r, 200));
  tb.setRate(10_000_000);
  let ms = await waiting;
  assert.ok(ms >= 250 && ms < 1500, `raised to 10 MB/s after 200 ms: waited ${Math.round(ms)} ms (expected ~300)`);
  // Lowered: 200 KB at 1 MB/s owes ~134 ms; after 50 ms (50 KB credited) the ~84 KB left take ~340 ms at 250 KB/s.
  tb = new TokenBucket(1_000_000);
  waiting = timedTake(tb, 200_000);
  await new Promise((r) => setTimeout(r, 50));
  tb.setRate(250_000);
  ms = await waiting;
  assert.ok(ms >= 300 && ms < 2000, `lowered to 250 KB/s after 50 ms: waited ${Math.round(ms)} ms (expected ~390)`);
});
