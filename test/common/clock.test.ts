/** Lease time: a holder counts the larger of the wall and monotonic elapsed times, a waiter the smaller. */
import assert from 'node:assert/strict';
import test from 'node:test';
import { elapsedMaxMs, elapsedMinMs, grantorNow, instant } from '../../src/common/clock';

test('a stepped-back wall clock or a suspended monotonic one errs on the safe side for holder and waiter', () => {
  const now = instant();
  // The wall clock was stepped back 10 s since this instant, 5 s really passed.
  const steppedBack = { wall: now.wall + 10_000, mono: now.mono - 5_000 };
  assert.ok(elapsedMaxMs(steppedBack) >= 5_000, 'the holder still sees its 5 s go by');
  assert.ok(elapsedMinMs(steppedBack) < 0, 'the waiter sees no time pass');
  // Suspended for a minute: the monotonic clock saw 1 s of it.
  const suspended = { wall: now.wall - 60_000, mono: now.mono - 1_000 };
  assert.ok(elapsedMaxMs(suspended) >= 60_000, 'the holder counts the whole suspension');
  const waited = elapsedMinMs(suspended);
  assert.ok(waited >= 1_000 && waited < 2_000, 'the waiter counts only what the monotonic clock saw');
  assert.equal(elapsedMaxMs(undefined), Infinity, 'nothing held: expired');
  // The grantor's clock is monotonic on the wall clock's scale.
  assert.ok(Math.abs(grantorNow() - Date.now()) < 60_000);
  const a = grantorNow();
  assert.ok(grantorNow() >= a);
});
