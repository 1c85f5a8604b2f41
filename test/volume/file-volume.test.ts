/** FileVolume growth: online, never shrinking, and crash-safe at every step (src/volume/file-volume.ts). */
import assert from 'node:assert/strict';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { FileVolume } from '../../src/volume/file-volume';
import { VolumeError } from '../../src/volume/errors';
import { removeDir, tempDir } from '../helpers/appliance';

const MiB = 1 << 20;

test('grow: the data stays, the new blocks read as zeros, writes past the old end work, and the size is kept at reopen', async () => {
  const dir = tempDir();
  try {
    const v = await FileVolume.open({ dir, name: 'g', sizeBytes: 4 * MiB });
    await v.write(4 * MiB - 4096, Buffer.alloc(4096, 0xab));
    await assert.rejects(v.write(4 * MiB, Buffer.alloc(512, 1)), (e: VolumeError) => e.code === 'VOLUME_OUT_OF_RANGE');
    assert.equal(await v.grow(8 * MiB), true);
    assert.equal(v.sizeBytes, 8 * MiB);
    assert.equal(await v.grow(8 * MiB), false, 'the same size changes nothing');
    assert.ok((await v.read(4 * MiB - 4096, 4096)).equals(Buffer.alloc(4096, 0xab)));
    assert.ok((await v.read(4 * MiB, 4 * MiB)).equals(Buffer.alloc(4 * MiB)));
    await v.write(8 * MiB - 512, Buffer.alloc(512, 0xcd));
    await assert.rejects(v.grow(6 * MiB), (e: VolumeError) => e.code === 'VOLUME_SHRINK');
    await assert.rejects(v.grow(8 * MiB + 100), (e: VolumeError) => e.code === 'VOLUME_SIZE_MISMATCH');
    const uuid = v.uuid;
    await v.close();
    const meta = JSON.parse(readFileSync(path.join(dir, 'g.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(meta.sizeBytes, 8 * MiB);
    assert.equal(meta.growingFromBytes, undefined);
    const again = await FileVolume.open({ dir, name: 'g' });
    assert.equal(again.sizeBytes, 8 * MiB);
    assert.ok(again.uuid.equals(uuid), 'the identity survives the grow');
    assert.ok((await again.read(8 * MiB - 512, 512)).equals(Buffer.alloc(512, 0xcd)));
    await again.close();
    const ro = await FileVolume.open({ dir, name: 'g', readOnly: true });
    await assert.rejects(ro.grow(16 * MiB), (e: VolumeError) => e.code === 'VOLUME_READ_ONLY');
    await ro.close();
  } finally {
    removeDir(dir);
  }
});

test('grow interrupted by a crash: metadata naming the old and new size is finished at open, whichever the file holds; any other size is still refused', async () => {
  const dir = tempDir();
  try {
    const v = await FileVolume.open({ dir, name: 'c', sizeBytes: 2 * MiB });
    await v.write(0, Buffer.alloc(4096, 0x77));
    await v.close();
    const metaPath = path.join(dir, 'c.json');
    const img = path.join(dir, 'c.img');
    const meta = JSON.parse(readFileSync(metaPath, 'utf8')) as Record<string, unknown>;
    // Crash after the first metadata write, before the file grew.
    writeFileSync(metaPath, JSON.stringify({ ...meta, sizeBytes: 6 * MiB, growingFromBytes: 2 * MiB }));
    let o = await FileVolume.open({ dir, name: 'c' });
    assert.equal(o.sizeBytes, 6 * MiB);
    assert.equal(statSync(img).size, 6 * MiB);
    assert.ok((await o.read(0, 4096)).equals(Buffer.alloc(4096, 0x77)));
    await o.close();
    assert.equal((JSON.parse(readFileSync(metaPath, 'utf8')) as Record<string, unknown>).growingFromBytes, undefined, 'finished: the marker is gone');
    // Crash after the file grew, before the last metadata write.
    writeFileSync(metaPath, JSON.stringify({ ...meta, sizeBytes: 8 * MiB, growingFromBytes: 6 * MiB }));
    truncateSync(img, 8 * MiB);
    o = await FileVolume.open({ dir, name: 'c' });
    assert.equal(o.sizeBytes, 8 * MiB);
    await o.close();
    // A file of neither size is damage, not a grow: refused as before.
    writeFileSync(metaPath, JSON.stringify({ ...meta, sizeBytes: 10 * MiB, growingFromBytes: 8 * MiB }));
    truncateSync(img, 5 * MiB);
    await assert.rejects(FileVolume.open({ dir, name: 'c' }), (e: VolumeError) => e.code === 'VOLUME_SIZE_MISMATCH');
  } finally {
    removeDir(dir);
  }
});
