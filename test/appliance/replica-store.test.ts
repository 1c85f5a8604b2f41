/**
 * The replica's store (src/appliance/replica.ts): a coalesced batch whose store failed after its
 * mark was written (the journal out of space; or a kill) must not leave a mark that hides the
 * mark of the batch sent again in its place, or replay would offer points inside that batch:
 * states the primary never had. Real Journal, ReplicaStore.store and the shipper's coalesce().
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { Journal } from '../../src/journal/wal';
import { checkReplayable } from '../../src/journal/point-in-time';
import { ReplicaStore } from '../../src/appliance/replica';
import { coalesce } from '../../src/replication/segment';
import { recoverImages } from '../../src/volume/journaled';
import { FileVolume } from '../../src/volume/file-volume';
import type { ReplicatedRecord } from '../../src/replication/ports';
import { removeDir, tempDir } from '../helpers/appliance';

const BS = 4096;
// 1..40 distinct blocks; within 41..80 only 70..79 are overwritten (by 80); within 41..100
// 50..69 are overwritten too (by 81..99): the batch sent again reaches further back.
function blockOf(seq: number): number {
  if (seq <= 40) return seq;
  if (seq >= 70 && seq <= 80) return 200;
  if (seq >= 50 && seq <= 69) return 300 + (seq - 50);
  if (seq >= 81 && seq <= 99) return 300 + ((seq - 81) % 20);
  if (seq === 100) return 319;
  return 400 + seq;
}
const rec = (seq: number): ReplicatedRecord => ({ seq, timeMs: 1000 + seq, volume: 'v', op: 'write', offsetBytes: blockOf(seq) * BS, lengthBytes: BS, data: Buffer.alloc(BS, seq & 0xff) });
const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => rec(a + i));

test('replica store: the mark of a coalesced batch whose store failed does not hide the batch stored in its place', async () => {
  const dir = tempDir();
  const j = await Journal.open({ dir: path.join(dir, 'journal'), retainMs: 3_600_000 });
  try {
    await j.registerVolume('v');
    for (let s = 1; s <= 40; s++) await j.appendAt(s, 1000 + s, 'v', 'write', blockOf(s) * BS, BS, Buffer.alloc(BS, s)).done;
    await j.sync();
    // Only what store() touches; a staged sync keeps it from applying (no volumes here).
    const store = Object.create(ReplicaStore.prototype) as ReplicaStore;
    Object.assign(store, { journal: j, durable: 40, applied: 40, queue: [], state: { fresh: false, consistentSeq: 0, appliedTimeMs: 0, appliedSeq: 40, staged: { heldSeq: 40, heldTimeMs: 0 } } });
    const first = coalesce(range(41, 80)).kept;
    assert.ok(first.length < 40, 'the first batch is coalesced');
    // The replica's journal reaches its space reserve: the append after the mark is refused.
    (j as unknown as { spaceLow: boolean }).spaceLow = true;
    await assert.rejects(store.store(first, 80), /full|space/);
    (j as unknown as { spaceLow: boolean }).spaceLow = false;
    // Sent again from durable+1, by now as a bigger coalesced batch.
    await store.store(coalesce(range(41, 100)).kept, 100);
    assert.deepEqual(await j.coalescedBatches(), [{ from: 50, to: 100 }]);
    const wrong: number[] = [];
    for (let s = 41; s <= 100; s++) {
      const inside = s >= 50 && s < 100;
      const refused = await checkReplayable(j, s).then(() => false, () => true);
      if (inside !== refused) wrong.push(s);
    }
    assert.deepEqual(wrong, [], 'points replay gets wrong (given inside the batch, or refused outside it)');
  } finally {
    await j.close();
    removeDir(dir);
  }
});

/** A store over journal `j` holding 1..durable, applying nothing (a staged sync holds it). */
function storeOver(j: Journal, durable: number): ReplicaStore {
  const store = Object.create(ReplicaStore.prototype) as ReplicaStore;
  const logger = { warn: () => undefined, error: () => undefined, info: () => undefined };
  Object.assign(store, { journal: j, durable, applied: durable, queue: [], logger, state: { fresh: false, consistentSeq: 0, appliedTimeMs: 0, appliedSeq: durable, staged: { heldSeq: durable, heldTimeMs: 0 } } });
  return store;
}

/** The journal's next `n`-th segment-file creation (counting reservations) fails with ENOSPC. */
function failNthReserve(j: Journal, n: number): () => void {
  const segs = (j as unknown as { segments: { reserve: (len: number) => unknown } }).segments;
  const orig = segs.reserve.bind(segs);
  let calls = 0;
  segs.reserve = (len: number) => {
    if (++calls === n) throw Object.assign(new Error('ENOSPC: no space left on device, open'), { code: 'ENOSPC' });
    return orig(len);
  };
  return () => {
    segs.reserve = orig;
    (j as unknown as { spaceLow: boolean }).spaceLow = false; // space returned (checkSpace)
  };
}

test('replica store: a batch the journal took in part (no room for a segment file midway) is taken whole when the primary sends it again', async () => {
  const dir = tempDir();
  let j = await Journal.open({ dir: path.join(dir, 'journal') });
  try {
    await j.registerVolume('v');
    for (let s = 1; s <= 40; s++) await j.appendAt(s, 1000 + s, 'v', 'write', blockOf(s) * BS, BS, Buffer.alloc(BS, s)).done;
    await j.sync();
    const store = storeOver(j, 40);
    const spaceBack = failNthReserve(j, 5); // records 41..44 are appended, 45 is refused
    await assert.rejects(store.store(range(41, 50), 50), /space/);
    spaceBack();
    assert.equal(store.durableSeq(), 40);
    assert.equal(j.headSeq(), 40, 'the records of the failed batch are gone from the journal');
    // The primary sends it again from durable+1: taken (it was refused as not following 44).
    await store.store(range(41, 50), 50);
    assert.equal(store.durableSeq(), 50);
    await j.close();
    j = await Journal.open({ dir: path.join(dir, 'journal') });
    const seen: number[] = [];
    for await (const r of j.records(40, 50)) {
      seen.push(r.seq);
      assert.ok(r.data.equals(Buffer.alloc(BS, r.seq)), `record ${r.seq}`);
    }
    assert.deepEqual(seen, [41, 42, 43, 44, 45, 46, 47, 48, 49, 50]);
  } finally {
    await j.close();
    removeDir(dir);
  }
});

test('replica start: the first records of a coalesced batch that a crash cut short are dropped, never replayed onto the volume alone', async () => {
  const dir = tempDir();
  const jdir = path.join(dir, 'journal');
  let j = await Journal.open({ dir: jdir });
  // Primary history 41..50: 41 writes block A, 42 block B, 43..49 others, 50 block A again.
  const blockAt = (seq: number) => (seq === 41 || seq === 50 ? 1 : seq - 40);
  const r = (seq: number): ReplicatedRecord => ({ seq, timeMs: 1000 + seq, volume: 'v', op: 'write', offsetBytes: blockAt(seq) * BS, lengthBytes: BS, data: Buffer.alloc(BS, seq) });
  const img = await FileVolume.open({ dir: path.join(dir, 'vols'), name: 'v', sizeBytes: 64 * BS, blockSize: 512, readOnly: false, create: true });
  try {
    await j.registerVolume('v');
    await j.resetTo(40); // the replica holds 1..40, applied
    // The state a kill between two segment writes leaves: the batch's mark (41 coalesced away,
    // points 41..49 no state the primary had), then only its records 42 and 43.
    await j.markCoalesced(41, 50);
    await j.appendAt(42, 1042, 'v', 'write', blockAt(42) * BS, BS, r(42).data!).done;
    await j.appendAt(43, 1043, 'v', 'write', blockAt(43) * BS, BS, r(43).data!).done;
    await j.sync();
    await j.close();
    j = await Journal.open({ dir: jdir });
    assert.deepEqual(await j.cutPartialCoalesced(), { from: 41, to: 50, records: 2 });
    assert.equal(j.headSeq(), 40);
    assert.deepEqual(await j.coalescedBatches(), []);
    await recoverImages(j, new Map([['v', img]]));
    assert.equal((await img.read(2 * BS, BS))[0], 0, 'B (seq 42) is not on the volume without A (seq 41)');
    // Sent again whole, it is stored and marked.
    const store = storeOver(j, 40);
    await store.store([42, 43, 44, 45, 46, 47, 48, 49, 50].map(r), 50);
    assert.equal(j.headSeq(), 50);
    assert.deepEqual(await j.coalescedBatches(), [{ from: 41, to: 50 }]);
    assert.equal(await j.cutPartialCoalesced(), undefined, 'a whole batch is left alone');
  } finally {
    await img.close();
    await j.close();
    removeDir(dir);
  }
});
