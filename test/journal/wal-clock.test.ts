/**
 * The journal under a wall clock that is stepped (NTP correcting a clock that ran ahead, an
 * operator): record times never go back, so that a time names one point; the ages of records
 * (the RPO, the history window) are measured on the monotonic clock, which no step moves; and a
 * journal reopened under a clock set back keeps its order.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import pino from 'pino';
import { Journal } from '../../src/journal/wal';
import { removeDir, tempDir } from '../helpers/appliance';

const HOUR = 3_600_000;

/** Date.now shifted by `shift.ms` while `fn` runs (the monotonic clock untouched). */
async function withSteppedClock<T>(fn: (shift: { ms: number }) => Promise<T>): Promise<T> {
  const real = Date.now.bind(Date);
  const shift = { ms: 0 };
  Date.now = () => real() + shift.ms;
  try {
    return await fn(shift);
  } finally {
    Date.now = real;
  }
}

function capturingLogger(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}

test('a wall clock set back or forward: record times never go back, ages and the history window follow the monotonic clock', async () => {
  const dir = tempDir();
  await withSteppedClock(async (shift) => {
    const { logger, lines } = capturingLogger();
    let j = await Journal.open({ dir, logger, retainMs: 60_000, ownsRetention: true });
    await j.registerVolume('v');
    const write = async (fill: number): Promise<number> => {
      const r = j.append('v', 'write', 0, 4096, Buffer.alloc(4096, fill));
      await r.done;
      return r.seq;
    };
    try {
      const a = await write(1);
      const tA = j.timeOf(a)!;
      const monoA = j.monoOfFirstAfter(a - 1)!;
      assert.ok(Math.abs(monoA - performance.now()) < 1000, `record ${a} written ${performance.now() - monoA} ms ago by the monotonic clock`);

      // Set back an hour: the next record keeps the newest time, and the step is logged.
      shift.ms = -HOUR;
      const b = await write(2);
      assert.equal(j.timeOf(b), tA, 'a record after the clock went back is not stamped before the one ahead of it');
      const warned = lines.find((l) => /wall clock is behind the newest record/.test(String(l.msg)));
      assert.ok(warned, 'the step back is logged');
      assert.ok(Number(warned.behindMs) > HOUR - 5000, `behind by ${String(warned.behindMs)} ms`);
      assert.ok(j.monoOfFirstAfter(b - 1)! >= monoA);
      // What a time names is one point: the time of a and b is both, nothing before it is a.
      assert.equal(j.lastSeqUpTo(tA), b);
      assert.equal(j.lastSeqUpTo(tA - 1), 0);

      // Forward two hours (one ahead of the real time): the stamps follow the wall clock again.
      shift.ms = HOUR;
      const c = await write(3);
      assert.ok(j.timeOf(c)! >= tA + HOUR - 5000, `record ${c} at ${new Date(j.timeOf(c)!).toISOString()}`);

      // The history window is 60 s of the monotonic clock: records written a moment ago stay,
      // although by the wall clock a and b are an hour old.
      await j.checkpoint(c);
      await j.trim();
      assert.equal(j.oldestSeq(), a, 'nothing written within the window is trimmed by a clock step');

      // Reopened under a clock set back again: the order holds across the restart, and no
      // record of the earlier life is younger than now.
      await j.close();
      shift.ms = -2 * HOUR;
      j = await Journal.open({ dir, logger, retainMs: 60_000, ownsRetention: true });
      assert.ok(j.monoOfFirstAfter(c - 1)! <= performance.now());
      const d = await write(4);
      assert.ok(j.timeOf(d)! >= j.timeOf(c)!, 'a record after a restart under a clock set back is not stamped before the earlier ones');
      for (const [x, y] of [
        [a, b],
        [b, c],
        [c, d],
      ]) {
        assert.ok(j.timeOf(y)! >= j.timeOf(x)!, `time of ${y} before time of ${x}`);
        assert.ok(j.monoOfFirstAfter(y - 1)! >= j.monoOfFirstAfter(x - 1)!, `monotonic time of ${y} before that of ${x}`);
      }
    } finally {
      await j.close();
      removeDir(dir);
    }
  });
});
