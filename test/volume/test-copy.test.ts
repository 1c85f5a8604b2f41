/**
 * A test copy made at an earlier (or later) point than the image holds (TestCopyVolume.rewind):
 * for any history of writes, WRITE SAMEs and UNMAPs, any base point, any point the image is at
 * and any point asked for, the copy reads exactly as the volume was right after that point.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import fc from 'fast-check';
import { Journal, type RecordOp } from '../../src/journal/wal';
import { FileVolume } from '../../src/volume/file-volume';
import { ApplyGate } from '../../src/volume/replica';
import { TestCopyVolume } from '../../src/volume/test-copy';
import { removeDir, tempDir } from '../helpers/appliance';

const BS = 4096;
const BLOCKS = 16;

interface Op {
  op: RecordOp;
  block: number;
  blocks: number;
  byte: number;
}

const opArb: fc.Arbitrary<Op> = fc
  .record({ op: fc.constantFrom<RecordOp>('write', 'write', 'writeSame', 'unmap'), block: fc.nat(BLOCKS - 1), blocks: fc.integer({ min: 1, max: 4 }), byte: fc.integer({ min: 1, max: 255 }) })
  .map((o) => ({ ...o, blocks: Math.min(o.blocks, BLOCKS - o.block) }));

/** The record's data: a write's bytes (distinct per block), a WRITE SAME's one block, nothing for UNMAP. */
function dataOf(o: Op): Buffer {
  if (o.op === 'unmap') return Buffer.alloc(0);
  if (o.op === 'writeSame') return Buffer.alloc(BS, o.byte);
  const d = Buffer.alloc(o.blocks * BS);
  for (let b = 0; b < o.blocks; b++) d.fill((o.byte + b) & 0xff, b * BS, (b + 1) * BS);
  return d;
}

/** The volume right after the first `n` operations. */
function stateAfter(ops: Op[], n: number): Buffer {
  const img = Buffer.alloc(BLOCKS * BS);
  for (const o of ops.slice(0, n)) {
    const d = dataOf(o);
    for (let b = 0; b < o.blocks; b++) {
      const at = (o.block + b) * BS;
      if (o.op === 'write') d.copy(img, at, b * BS, (b + 1) * BS);
      else if (o.op === 'writeSame') d.copy(img, at);
      else img.fill(0, at, at + BS);
    }
  }
  return img;
}

test('a test copy rewound (or brought forward) to any retained point reads as the volume was right after it', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(opArb, { minLength: 1, maxLength: 30 }),
      fc.tuple(fc.nat(), fc.nat(), fc.nat()),
      async (ops, [x, y, z]) => {
        const n = ops.length;
        // Base ≤ both the image's point and the point asked for (as on a replica).
        const base = x % (n + 1);
        const now = base + (y % (n - base + 1));
        const at = base + (z % (n - base + 1));
        const dir = tempDir();
        try {
          const journal = await Journal.open({ dir: path.join(dir, 'journal'), retainMs: 3_600_000 });
          try {
            await journal.registerVolume('v');
            for (const o of ops) await journal.append('v', o.op, o.block * BS, o.blocks * BS, dataOf(o)).done;
            if (base > 0) await journal.rebase(base, Date.now(), async (baseDir) => {
                mkdirSync(baseDir, { recursive: true });
                writeFileSync(path.join(baseDir, 'v.img'), stateAfter(ops, base));
              });
            const image = await FileVolume.open({ dir: path.join(dir, 'volumes'), name: 'v', sizeBytes: BLOCKS * BS, blockSize: BS });
            await image.write(0, stateAfter(ops, now));
            const copy = await TestCopyVolume.create(image, new ApplyGate(), path.join(dir, 'copy.img'));
            try {
              await copy.rewind(journal, at, now);
              const got = await copy.read(0, BLOCKS * BS);
              const want = stateAfter(ops, at);
              if (!got.equals(want)) {
                let i = 0;
                while (got[i] === want[i]) i++;
                assert.fail(`base ${base}, image at ${now}, copy at ${at}: block ${Math.floor(i / BS)} reads ${got[i]}, was ${want[i]}`);
              }
              // The image itself is untouched.
              assert.ok((await image.read(0, BLOCKS * BS)).equals(stateAfter(ops, now)));
            } finally {
              await copy.close();
              await image.close();
            }
          } finally {
            await journal.close();
          }
        } finally {
          removeDir(dir);
        }
      },
    ),
    { numRuns: 60 },
  );
});
