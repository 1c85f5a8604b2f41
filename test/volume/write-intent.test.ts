/**
 * src/volume/write-intent.ts: a region is in the file, synced, before the write into it may go
 * on; a checkpoint past a region's last write unmarks it; what the file held is read back after
 * a crash; an unusable file says so.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { removeDir, tempDir } from '../helpers/appliance';
import { readIntentFile, WriteIntentMap } from '../../src/volume/write-intent';

const MiB = 1024 * 1024;
const REGION = 4 * MiB;

/** A cleared 16 MiB map in a fresh directory, for `fn`; the directory goes afterwards. */
async function withClearMap(fn: (map: WriteIntentMap, file: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  const file = path.join(dir, 'write-intent.map');
  try {
    const map = await WriteIntentMap.open(file, 16 * MiB, REGION);
    await map.reset();
    await fn(map, file);
  } finally {
    removeDir(dir);
  }
}

test('a mark is in the file before it resolves; marked regions cost nothing more; checkpoints unmark', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'state', 'v', 'write-intent.map');
  try {
    assert.deepEqual(await readIntentFile(file), { unknown: 'missing', reason: `${file} does not exist` });
    const map = await WriteIntentMap.open(file, 64 * MiB, REGION);
    await map.reset();
    assert.deepEqual(await readIntentFile(file), { ranges: [] });
    // A write across the boundary of regions 1 and 2, then one into region 9.
    const first = map.mark(REGION + REGION / 2, REGION, 1);
    assert.ok(first, 'unmarked regions: the write waits');
    await first;
    assert.deepEqual(await readIntentFile(file), { ranges: [{ offsetBytes: REGION, lengthBytes: 2 * REGION }] });
    assert.equal(map.mark(REGION, 4096, 2), undefined, 'a marked region: nothing to wait for');
    await map.mark(9 * REGION, 4096, 3);
    assert.deepEqual(await readIntentFile(file), { ranges: [{ offsetBytes: REGION, lengthBytes: 2 * REGION }, { offsetBytes: 9 * REGION, lengthBytes: REGION }] });
    // Region 1 was last written by record 2, region 2 by record 1, region 9 by record 3.
    map.checkpointed(2);
    await map.close();
    assert.deepEqual(await readIntentFile(file), { ranges: [{ offsetBytes: 9 * REGION, lengthBytes: REGION }] });
    // Reopened as after a crash: the marks are still there until reset.
    const again = await WriteIntentMap.open(file, 64 * MiB, REGION);
    assert.deepEqual(await readIntentFile(file), { ranges: [{ offsetBytes: 9 * REGION, lengthBytes: REGION }] });
    assert.ok(again.mark(9 * REGION, 512, 4), 'a mark read back is not taken as synced by this run: the write waits for its own');
    await again.reset();
    assert.deepEqual(await readIntentFile(file), { ranges: [] });
    // A write past the size the map was opened with (the volume grew) extends it.
    await again.mark(100 * REGION, 4096, 5);
    await again.close();
    assert.deepEqual(await readIntentFile(file), { ranges: [{ offsetBytes: 100 * REGION, lengthBytes: REGION }] });
  } finally {
    removeDir(dir);
  }
});

test('a mark written again after a region was unmarked; concurrent marks share a write', () =>
  withClearMap(async (map, file) => {
    await map.mark(0, 4096, 1);
    map.checkpointed(1);
    // Unmarked (in memory at once, in the file soon): the next write into it waits again.
    const again = map.mark(4096, 4096, 2);
    assert.ok(again);
    const other = map.mark(REGION, 4096, 3);
    assert.ok(other);
    await Promise.all([again, other]);
    assert.deepEqual(await readIntentFile(file), { ranges: [{ offsetBytes: 0, lengthBytes: 2 * REGION }] });
    await map.close();
  }));

test('a mark that cannot be written rejects (the write must not reach the image), and the region stays unmarked', () =>
  withClearMap(async (map) => {
    // Its file handle closed behind its back: every write of the map fails (EBADF).
    await (map as unknown as { fh: { close(): Promise<void> } }).fh.close();
    await assert.rejects(map.mark(0, 4096, 1)!, /write-intent map .*write-intent\.map/);
    assert.ok(map.failure);
    const next = map.mark(0, 4096, 2);
    assert.ok(next, 'not taken as marked: the next write into the region tries again');
    await assert.rejects(next);
  }));

test('an unusable map says why', async () => {
  const dir = tempDir();
  try {
    const file = path.join(dir, 'write-intent.map');
    writeFileSync(file, 'not a map at all');
    const found = await readIntentFile(file);
    assert.ok('unknown' in found && found.unknown === 'invalid', JSON.stringify(found));
    const map = await WriteIntentMap.open(file, MiB, REGION);
    await map.reset();
    await map.close();
    assert.deepEqual(await readIntentFile(file), { ranges: [] });
    const bytes = readFileSync(file);
    bytes[16] = 7;
    writeFileSync(file, bytes);
    const bad = await readIntentFile(file);
    assert.ok('unknown' in bad && /region byte is 7/.test(bad.reason), JSON.stringify(bad));
  } finally {
    removeDir(dir);
  }
});
