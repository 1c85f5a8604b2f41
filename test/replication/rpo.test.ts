import assert from 'node:assert/strict';
import test from 'node:test';
import { RpoController } from '../../src/replication/rpo';

/** Simulate a primary writing at `writeRate` over a link of `linkRate` bytes/s for `seconds`. */
function simulate(c: RpoController, writeRate: number, linkRate: number, seconds: number, overwriteFraction = 0) {
  let backlog = 0;
  const pending: { t: number; bytes: number }[] = [];
  let maxRpo = 0;
  let minWriteRate = Infinity;
  for (let t = 0; t <= seconds * 1000; t += 100) {
    const d = c.current;
    // Throttling stretches each write: effective write rate falls as the per-write delay grows (4 KiB writes, QD 32).
    const perWriteMs = 0.1 + d.throttleDelayMs;
    const effective = Math.min(writeRate, (32 * 4096) / (perWriteMs / 1000));
    minWriteRate = Math.min(minWriteRate, effective);
    const appended = effective * 0.1;
    pending.push({ t, bytes: appended });
    backlog += appended;
    let budget = linkRate * 0.1 * (d.coalesce ? 1 / (1 - overwriteFraction) : 1);
    let acked = 0;
    while (pending.length && budget > 0) {
      const take = Math.min(budget, pending[0].bytes);
      pending[0].bytes -= take;
      budget -= take;
      acked += take;
      if (pending[0].bytes <= 0) pending.shift();
    }
    backlog -= acked;
    const r = c.observe({ nowMs: t, oldestUnackedMs: pending.length ? pending[0].t : undefined, backlogBytes: backlog, ackedBytesDelta: acked, appendedBytesDelta: appended });
    if (t > 2000) maxRpo = Math.max(maxRpo, r.rpoSeconds);
  }
  return { maxRpo, minWriteRate };
}

test('writes slower than the link: RPO stays near zero, no coalescing or throttling', () => {
  const c = new RpoController(5, 'throttle');
  const { maxRpo } = simulate(c, 6e6, 10e6, 30);
  assert.ok(maxRpo < 0.5, `max rpo ${maxRpo}`);
  assert.equal(c.current.throttleDelayMs, 0);
  assert.equal(c.current.coalesce, false);
});

test('throttle policy: writes at twice the link rate are slowed and the RPO stays under the target', () => {
  const c = new RpoController(5, 'throttle');
  const { maxRpo, minWriteRate } = simulate(c, 20e6, 10e6, 120);
  assert.ok(maxRpo < 5, `max rpo ${maxRpo}`);
  assert.ok(minWriteRate < 12e6, `writers slowed to about the link rate (${minWriteRate})`);
});

test('alert policy: the target is missed and said so; nothing is slowed', () => {
  const c = new RpoController(5, 'alert');
  simulate(c, 20e6, 10e6, 60);
  assert.equal(c.current.targetMissed, true);
  assert.equal(c.current.throttleDelayMs, 0);
  assert.equal(c.current.coalesce, false);
});

test('coalesce policy: coalescing turns on under pressure', () => {
  const c = new RpoController(5, 'coalesce');
  simulate(c, 20e6, 10e6, 20, 0.6);
  assert.equal(c.current.coalesce, true);
});

test('paused by the operator: the RPO and a missed target are reported, but nothing coalesces or throttles, and the drain rate is not learnt as zero', () => {
  const c = new RpoController(2, 'throttle');
  // Backlogged at twice the link rate until the throttle works and the drain rate is known.
  simulate(c, 20e6, 10e6, 30);
  assert.ok(c.current.throttleDelayMs > 0 && c.current.coalesce);
  const drain = c.current.drainBytesPerSec;
  // Paused for 20 s: writes go on, nothing is acknowledged.
  let backlog = 1e6;
  let d = c.current;
  for (let t = 30_100; t <= 50_000; t += 100) {
    backlog += 2e6;
    d = c.observe({ nowMs: t, oldestUnackedMs: 30_000, backlogBytes: backlog, ackedBytesDelta: 0, appendedBytesDelta: 2e6, paused: true });
  }
  assert.equal(d.throttleDelayMs, 0);
  assert.equal(d.coalesce, false);
  assert.equal(d.targetMissed, true);
  assert.ok(d.rpoSeconds >= 19.9, `rpo ${d.rpoSeconds}`);
  assert.ok(d.drainBytesPerSec >= drain * 0.99, `drain ${d.drainBytesPerSec} (was ${drain})`);
  // Resumed: the controller acts again on the backlog it sees.
  d = c.observe({ nowMs: 50_100, oldestUnackedMs: 30_000, backlogBytes: backlog, ackedBytesDelta: 0, appendedBytesDelta: 0 });
  assert.ok(d.throttleDelayMs > 0 && d.coalesce);
});

test('link down or an image sync under way: writers are not throttled (slower writes would not bring the replica closer); a change of baseline teaches no drain rate', () => {
  const c = new RpoController(2, 'throttle');
  simulate(c, 20e6, 10e6, 30);
  assert.ok(c.current.throttleDelayMs > 0);
  const drain = c.current.drainBytesPerSec;
  // A sync starts: the shipper's point jumps, the backlog shrinks at once. No acknowledgement that fast happened.
  let d = c.observe({ nowMs: 30_100, oldestUnackedMs: 25_000, backlogBytes: 1e6, ackedBytesDelta: 500e6, appendedBytesDelta: 2e6, throttleCannotHelp: true, newBaseline: true });
  assert.equal(d.throttleDelayMs, 0);
  assert.ok(d.drainBytesPerSec <= drain * 1.01, `drain ${d.drainBytesPerSec} (was ${drain}): learnt from the jump`);
  for (let t = 30_200; t <= 40_000; t += 100) d = c.observe({ nowMs: t, oldestUnackedMs: 25_000, backlogBytes: 1e6, ackedBytesDelta: 1e6, appendedBytesDelta: 1e6, throttleCannotHelp: true });
  assert.equal(d.throttleDelayMs, 0);
  assert.equal(d.targetMissed, true, 'the RPO is still reported');
  assert.ok(d.rpoSeconds >= 14.9, `rpo ${d.rpoSeconds}`);
});
