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
