/**
 * Journal.readAfter bounded by a record count as well as by data bytes: UNMAPs carry no data,
 * so a long run of them (an fstrim) was read whole, into memory, in one call, and the shipper
 * then built a segment too many records long to send. From the recent-record cache and from
 * the index alike.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { Journal } from '../../src/journal/wal';
import { releaseBuffer } from '../../src/common/buffer-pool';
import { removeDir, tempDir } from '../helpers/appliance';

const MiB = 1 << 20;
const EMPTY = Buffer.alloc(0);

test('readAfter stops at maxRecords, from the recent-record cache and from the index alike', async () => {
  const dir = tempDir();
  const cached = await Journal.open({ dir: path.join(dir, 'c'), replicated: true });
  const plain = await Journal.open({ dir: path.join(dir, 'p'), cacheRecent: false });
  try {
    for (const j of [cached, plain]) {
      await j.registerVolume('v');
      const dones: Promise<void>[] = [];
      // 2000 UNMAPs, then 10 small writes, then 500 UNMAPs.
      for (let i = 0; i < 2000; i++) dones.push(j.append('v', 'unmap', i * 4096, 4096, EMPTY).done);
      for (let i = 0; i < 10; i++) dones.push(j.append('v', 'write', i * 4096, 4096, Buffer.alloc(4096, i + 1)).done);
      for (let i = 0; i < 500; i++) dones.push(j.append('v', 'unmap', i * 4096, 4096, EMPTY).done);
      await Promise.all(dones);
      await j.sync();
      const without = await j.readAfter(0, MiB);
      assert.equal(without.length, 2510, 'without a count limit, data bytes alone bound the read: every UNMAP comes');
      for (const r of without) releaseBuffer(r.data);
      // Every record, 700 at a time at most, in order, none twice.
      const seqs: number[] = [];
      for (let after = 0; ; ) {
        const batch = await j.readAfter(after, MiB, undefined, undefined, 700);
        if (!batch.length) break;
        assert.ok(batch.length <= 700, `a read of ${batch.length} records`);
        for (const r of batch) {
          seqs.push(r.seq);
          if (r.op === 'write') assert.ok(r.data.equals(Buffer.alloc(4096, r.seq - 2000)), `record ${r.seq} data`);
          releaseBuffer(r.data);
        }
        after = batch[batch.length - 1].seq;
      }
      assert.deepEqual(seqs, Array.from({ length: 2510 }, (_, i) => i + 1));
      // The data bound still applies under the count one; at least one record always comes.
      assert.deepEqual((await j.readAfter(2000, 8192, undefined, undefined, 700)).map((r) => r.seq), [2001, 2002]);
      assert.deepEqual((await j.readAfter(5, MiB, undefined, undefined, 1)).map((r) => r.seq), [6]);
    }
  } finally {
    await cached.close();
    await plain.close();
    removeDir(dir);
  }
});
