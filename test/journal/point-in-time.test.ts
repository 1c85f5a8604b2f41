/**
 * Point-in-time reconstruction on a replica's journal: a batch the primary shipped coalesced
 * holds only the newest version of each block it overwrote, so the points inside it are states
 * the primary never had. Replay refuses them by sequence number, and a time inside the batch
 * goes back to the last point before it; every other point still replays exactly. With history
 * on and every record folded (an idle volume), the head is the base, at the base's time.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { checkReplayable, describeWindow, pointAtTime, reconstruct, resolvePoint } from '../../src/journal/point-in-time';
import { ImageFileTarget, Journal, seqAtTime } from '../../src/journal/wal';
import { removeDir, tempDir } from '../helpers/appliance';

const BS = 4096;
const block = (byte: number) => Buffer.alloc(BS, byte);

/**
 * The primary's history: 1..3 then 4..9, of which the replica got 4..9 coalesced.
 * Block 1 is overwritten at 8 and block 0 at 9 within the batch: 5 (block 1) and 7 (block 0)
 * were dropped. State after 6 at the primary has block 1 = 0x05, which the replica never had.
 */
const history: [seq: number, blk: number, byte: number][] = [
  [1, 0, 0x01],
  [2, 1, 0x02],
  [3, 2, 0x03],
  [4, 3, 0x04],
  [5, 1, 0x05],
  [6, 2, 0x06],
  [7, 0, 0x07],
  [8, 1, 0x08],
  [9, 0, 0x09],
];
const kept = new Set([1, 2, 3, 4, 6, 8, 9]);

/** The volume at the primary right after `seq` (4 blocks). */
function stateAfter(seq: number): Buffer {
  const img = Buffer.alloc(4 * BS);
  for (const [s, b, byte] of history) if (s <= seq) block(byte).copy(img, b * BS);
  return img;
}

async function replicaJournal(dir: string): Promise<Journal> {
  const j = await Journal.open({ dir, retainMs: 3_600_000 });
  await j.registerVolume('v');
  const t0 = Date.parse('2026-11-28T00:00:00Z');
  // The replica marks the batch before it stores its records (ReplicaStore.store).
  await j.markCoalesced(5, 9);
  for (const [seq, blk, byte] of history) {
    if (kept.has(seq)) await j.appendAt(seq, t0 + seq * 1000, 'v', 'write', blk * BS, BS, block(byte)).done;
  }
  await j.sync();
  return j;
}

test('replay refuses a point inside a coalesced batch, goes back to the batch start for a time inside it, and replays every other point exactly', async () => {
  const dir = tempDir();
  let j = await replicaJournal(path.join(dir, 'journal'));
  try {
    const image = path.join(dir, 'image.img');
    const replay = async (seq: number) => {
      const out = path.join(dir, `out-${seq}.img`);
      await reconstruct({ journal: j, volume: 'v', sizeBytes: 4 * BS, imagePath: image, out, seq });
      return readFileSync(out);
    };
    for (const seq of [0, 1, 2, 3, 4]) {
      assert.equal(await j.coalescedAround(seq), undefined, `point ${seq}`);
      assert.ok((await replay(seq)).equals(stateAfter(seq)), `replay of point ${seq}`);
    }
    for (const seq of [5, 6, 7, 8]) {
      assert.deepEqual(await j.coalescedAround(seq), { from: 5, to: 9 }, `point ${seq}`);
      await assert.rejects(replay(seq), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'JOURNAL_COALESCED_POINT');
        assert.match(e.message, /sequence \d lies inside a batch .* sequences 5\.\.8 .* nearest points are 4 and 9/);
        return true;
      });
      assert.equal(await j.consistentAtOrBefore(seq), 4);
    }
    assert.equal(await j.coalescedAround(9), undefined);
    await assert.doesNotReject(checkReplayable(j, 9));
    // Times: the last write at or before the time, moved back out of the batch.
    const t0 = Date.parse('2026-11-28T00:00:00Z');
    assert.equal(await seqAtTime(j, t0 + 3_500), 3);
    assert.equal(await seqAtTime(j, t0 + 6_500), 4, 'a time inside the batch gives the point before it');
    assert.equal(await seqAtTime(j, t0 + 8_000), 4);
    assert.equal(await seqAtTime(j, t0 + 9_000), 9);
    // The marks outlive a restart.
    await j.close();
    j = await Journal.open({ dir: path.join(dir, 'journal'), retainMs: 3_600_000 });
    assert.deepEqual(await j.coalescedAround(7), { from: 5, to: 9 });
    const k = await Journal.open({ dir: path.join(dir, 'plain') });
    try {
      await k.registerVolume('v');
      await k.markCoalesced(2, 4);
      for (const seq of [1, 4]) await k.appendAt(seq, t0 + seq, 'v', 'write', 0, BS, block(seq)).done;
      await k.sync();
      assert.deepEqual(await k.coalescedAround(3), { from: 2, to: 4 });
      await k.checkpoint(4);
      // Held history is not trimmed; once released, trimming past the batch drops its mark.
      await k.holdHistory(async () => {
        await k.trim();
        assert.equal(k.oldestSeq(), 1, 'nothing trimmed while the history is held');
      });
      await k.trim();
      assert.equal(k.oldestSeq(), 5);
      assert.equal(await k.coalescedAround(3), undefined, 'the mark goes with the records');
      await k.markCoalesced(6, 8);
      await k.resetTo(10);
      assert.equal(await k.coalescedAround(7), undefined, 'a reset forgets the marks');
    } finally {
      await k.close();
    }
  } finally {
    await j.close();
    removeDir(dir);
  }
});

test('history: the retained records by time, in buckets holding records, per volume, from memory', async () => {
  const dir = tempDir();
  const j = await Journal.open({ dir: path.join(dir, 'journal'), retainMs: 3_600_000 });
  try {
    await j.registerVolume('a');
    await j.registerVolume('b');
    const t0 = Date.parse('2026-11-28T00:00:00Z');
    // Seconds 0 and 1 quiet, nothing in 2..4, a burst in 5.
    const plan: [seq: number, vol: string, atMs: number, bytes: number][] = [
      [1, 'a', 100, BS],
      [2, 'b', 900, BS],
      [3, 'a', 1_500, BS],
      [4, 'a', 5_000, 8 * BS],
      [5, 'b', 5_999, 4 * BS],
    ];
    for (const [seq, vol, at, bytes] of plan) await j.appendAt(seq, t0 + at, vol, 'write', 0, bytes, Buffer.alloc(bytes, seq)).done;
    assert.deepEqual(j.history(1000), [
      { startMs: t0, firstSeq: 1, lastSeq: 2, records: 2, bytes: 2 * BS, perVolume: { a: BS, b: BS } },
      { startMs: t0 + 1000, firstSeq: 3, lastSeq: 3, records: 1, bytes: BS, perVolume: { a: BS } },
      { startMs: t0 + 5000, firstSeq: 4, lastSeq: 5, records: 2, bytes: 12 * BS, perVolume: { a: 8 * BS, b: 4 * BS } },
    ]);
    assert.deepEqual(j.history(10_000).map((b) => [b.firstSeq, b.lastSeq, b.records]), [[1, 5, 5]]);
  } finally {
    await j.close();
    removeDir(dir);
  }
});

test('history on and every record folded into the base (an idle volume): the window ends at the base, with its time, and --time now gives the head', async () => {
  const dir = tempDir();
  try {
    const j = await Journal.open({ dir: path.join(dir, 'journal'), retainMs: 50 });
    await j.registerVolume('v');
    for (let s = 1; s <= 3; s++) await j.append('v', 'write', 0, BS, block(s)).done;
    const lastWriteMs = j.timeOf(3)!;
    await j.checkpoint(3);
    await new Promise((r) => setTimeout(r, 100));
    await j.trim(async (v) => ImageFileTarget.open(j.baseImagePath(v), 4 * BS, true));
    assert.equal(j.stats().records, 0, 'every record folded');
    const base = j.baseInfo()!;
    assert.equal(base.seq, 3);
    assert.deepEqual(j.window(), { fromSeq: 3, toSeq: 3, fromTimeMs: base.timeMs, toTimeMs: base.timeMs });
    assert.equal(base.timeMs, lastWriteMs, 'the base has the time of its last record');
    assert.ok(!describeWindow(j).includes('?'), describeWindow(j));
    assert.equal(await pointAtTime(j, Date.now()), 3, '--time now');
    assert.deepEqual(await resolvePoint(j, { timeMs: Date.now() }), { seq: 3, timeMs: base.timeMs });
    await assert.rejects(pointAtTime(j, base.timeMs - 1000), /outside the retained window/, 'a time before the base is still refused');
    await j.close();
  } finally {
    removeDir(dir);
  }
});
