/**
 * The journal's cache of recent records: each backing buffer counts once against the budget
 * (many small records are views into one network buffer), the oldest leave first, records the
 * replica holds leave at once, and a record's pooled buffer goes back to the pool when the
 * cache was its last holder.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { acquireBuffer, releaseBuffer } from '../../src/common/buffer-pool';
import { RecentRecords } from '../../src/journal/recent';
import type { JournalRecord } from '../../src/journal/wal';

const KiB = 1024;

function rec(seq: number, data: Buffer): JournalRecord {
  return { seq, timeMs: seq, volume: 'v', op: 'write', offsetBytes: seq * data.length, lengthBytes: data.length, data };
}

test('records that share one backing buffer count it once', () => {
  const chunk = Buffer.alloc(256 * KiB);
  const cache = new RecentRecords(300 * KiB);
  for (let i = 0; i < 64; i++) cache.add(rec(i + 1, chunk.subarray(i * 4 * KiB, (i + 1) * 4 * KiB)));
  assert.equal(cache.size, 64, 'every 4K view of the one buffer stays');
  assert.equal(cache.heldBytes, 256 * KiB + 64 * 256);
  for (let s = 1; s <= 64; s++) assert.equal(cache.get(s)?.seq, s);
  cache.clear();
  assert.equal(cache.heldBytes, 0);
});

test('over the budget the oldest records leave first; dropThrough drops what the replica holds', () => {
  const cache = new RecentRecords(10 * (64 * KiB + 256));
  for (let s = 1; s <= 25; s++) cache.add(rec(s, Buffer.alloc(64 * KiB, s)));
  assert.equal(cache.size, 10);
  assert.equal(cache.get(15), undefined);
  assert.equal(cache.get(16)?.data[0], 16);
  assert.equal(cache.get(25)?.data[0], 25);
  assert.equal(cache.get(26), undefined);
  cache.dropThrough(20);
  assert.deepEqual([16, 20, 21, 25].map((s) => cache.get(s)?.seq), [undefined, undefined, 21, 25]);
  assert.equal(cache.size, 5);
  assert.equal(cache.heldBytes, 5 * (64 * KiB + 256));
  cache.dropThrough(1000);
  assert.equal(cache.size, 0);
  assert.equal(cache.get(25), undefined);
  // Long runs compact the queue without losing the order.
  for (let s = 1; s <= 20_000; s++) {
    cache.add(rec(s, Buffer.alloc(512)));
    if (s % 7 === 0) cache.dropThrough(s - 3);
  }
  // The last drop (at 19 999) kept 19 997 on.
  for (let s = 19_997; s <= 20_000; s++) assert.equal(cache.get(s)?.seq, s);
  assert.equal(cache.get(19_996), undefined);
  assert.equal(cache.size, 4);
});

test('a replica journal with gaps (coalesced batches) still finds every record', () => {
  const cache = new RecentRecords(64 * 1024 * KiB);
  const seqs = [3, 4, 9, 10, 11, 40, 41, 100];
  for (const s of seqs) cache.add(rec(s, Buffer.alloc(512, s)));
  for (const s of seqs) assert.equal(cache.get(s)?.data[0], s);
  for (const s of [1, 5, 8, 12, 39, 99, 101]) assert.equal(cache.get(s), undefined);
});

test('a pooled buffer goes back to the pool once the cache, its last holder, drops it', () => {
  const size = 96 * KiB + 512; // a size no other test uses, so the pool's list for it starts empty
  const data = acquireBuffer(size);
  const cache = new RecentRecords(1024 * KiB);
  cache.add(rec(1, data));
  releaseBuffer(data); // the writer is done; the cache still holds it
  const other = acquireBuffer(size);
  assert.notEqual(other.buffer, data.buffer, 'still held by the cache: not handed out again');
  cache.dropThrough(1);
  const again = acquireBuffer(size);
  assert.equal(again.buffer, data.buffer, 'returned to the pool when the cache let go');
  releaseBuffer(other);
  releaseBuffer(again);
});
