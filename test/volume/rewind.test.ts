/** The rewind (src/volume/rewind.ts) that test copies at a point and promotions at a point share. */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { Journal } from '../../src/journal/wal';
import { writeChangedBlocksAsOf } from '../../src/volume/rewind';
import { removeDir, tempDir } from '../helpers/appliance';

const BS = 4096;

test('rewind: a stored base at sequence 0 (history restarted over volumes that held data) gives the blocks their base content, not zeros', async () => {
  const dir = tempDir();
  const j = await Journal.open({ dir: path.join(dir, 'j'), retainMs: 3_600_000 });
  try {
    await j.registerVolume('v');
    await j.rebase(0, Date.now(), async (baseDir) => {
      mkdirSync(baseDir, { recursive: true });
      writeFileSync(path.join(baseDir, 'v.img'), Buffer.alloc(4 * BS, 0xaa));
    });
    await j.appendAt(1, Date.now(), 'v', 'write', 0, BS, Buffer.alloc(BS, 0xbb)).done;
    const img = Buffer.alloc(4 * BS, 0xaa);
    img.fill(0xbb, 0, BS);
    await writeChangedBlocksAsOf(j, 'v', { blockSize: BS, sizeBytes: 4 * BS }, 0, 1, async (off, d) => void d.copy(img, off));
    assert.ok(img.equals(Buffer.alloc(4 * BS, 0xaa)), `block 0 is 0x${img[0].toString(16)}, not the base's 0xaa`);
  } finally {
    await j.close();
    removeDir(dir);
  }
});
