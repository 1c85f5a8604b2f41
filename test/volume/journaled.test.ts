/**
 * applyInOrder, the replica's apply: whatever mix of back-to-back writes (combined into one
 * pwritev), overlapping writes, WRITE SAME and UNMAP a segment holds, the image ends exactly as
 * if each record had been applied alone, in order (checked against a plain in-memory model).
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import type { JournalRecord } from '../../src/journal/wal';
import { FileVolume } from '../../src/volume/file-volume';
import { applyInOrder } from '../../src/volume/journaled';
import { removeDir, tempDir } from '../helpers/appliance';

const BLOCK = 512;
const BLOCKS = 64;
const RUNS = Number(process.env.FC_RUNS ?? 100);

type Op = { op: 'write'; block: number; blocks: number; fill: number } | { op: 'writeSame'; block: number; blocks: number; fill: number } | { op: 'unmap'; block: number; blocks: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('write' as const), block: fc.nat({ max: BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 8 }), fill: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('writeSame' as const), block: fc.nat({ max: BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 8 }), fill: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unmap' as const), block: fc.nat({ max: BLOCKS - 1 }), blocks: fc.integer({ min: 1, max: 8 }) }) },
);

/** Mostly sequential streams (each write where the last ended), with jumps and overwrites. */
const streamArb = fc.array(fc.tuple(opArb, fc.boolean()), { minLength: 1, maxLength: 40 }).map((pairs) => {
  const ops: Op[] = [];
  let next = 0;
  for (const [o, follow] of pairs) {
    const block = follow && o.op === 'write' ? next : o.block;
    const blocks = Math.min(o.blocks, BLOCKS - block);
    if (blocks <= 0) continue;
    ops.push({ ...o, block, blocks });
    next = block + blocks;
  }
  return ops;
});

function toRecords(ops: Op[]): JournalRecord[] {
  return ops.map((o, i) => ({
    seq: i + 1,
    timeMs: 0,
    volume: 'v',
    op: o.op,
    offsetBytes: o.block * BLOCK,
    lengthBytes: o.blocks * BLOCK,
    // Each block of a write says where in the write it is, so a misplaced block shows.
    data: o.op === 'write' ? Buffer.concat(Array.from({ length: o.blocks }, (_, b) => Buffer.alloc(BLOCK, (o.fill + b) & 0xff))) : o.op === 'writeSame' ? Buffer.alloc(BLOCK, o.fill) : Buffer.alloc(0),
  }));
}

function model(records: JournalRecord[]): Buffer {
  const img = Buffer.alloc(BLOCK * BLOCKS);
  for (const r of records) {
    if (r.op === 'write') r.data.copy(img, r.offsetBytes);
    else if (r.op === 'writeSame') for (let o = 0; o < r.lengthBytes; o += BLOCK) r.data.copy(img, r.offsetBytes + o);
    else img.fill(0, r.offsetBytes, r.offsetBytes + r.lengthBytes);
  }
  return img;
}

test('applyInOrder leaves the image as the records applied one by one would, and calls `before` for every record', async () => {
  const dir = tempDir();
  try {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(streamArb, async (ops) => {
        const image = await FileVolume.open({ dir, name: `v${n++}`, sizeBytes: BLOCK * BLOCKS, blockSize: BLOCK });
        try {
          const records = toRecords(ops);
          const seen: number[] = [];
          await applyInOrder(records, () => image, async (r) => void seen.push(r.seq));
          assert.deepEqual(seen, records.map((r) => r.seq));
          const got = await image.read(0, BLOCK * BLOCKS);
          assert.ok(got.equals(model(records)), 'image differs from the in-order model');
        } finally {
          await image.close();
        }
      }),
      { numRuns: RUNS },
    );
  } finally {
    removeDir(dir);
  }
});
