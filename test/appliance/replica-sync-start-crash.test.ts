/**
 * src/appliance/replica.ts: a replica killed inside a sync start (SyncStart: begin) or inside the
 * handling of a divergence (acceptPrimary) must restart either as it was before (the handshake
 * redoes the step) or syncing from the new point, never "consistent" at a point its volumes do
 * not hold. The journal reset is durable at once; the state file that says a sync is under way
 * has to be written first. Real Journal, FileVolume and ReplicaStore; the kill is simulated by
 * failing the step right after the point where it would land, then reopening the data directory
 * the way the appliance's replica start does.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { removeDir, tempDir } from '../helpers/appliance';
import { BS, closeSite, killAtNextSave, killAtReset, openSite as openReplicaSite, range, replicaAt, VOL, type Site } from '../helpers/replica-site';

/** Open the site as a restart after a kill does: the journal's tail recovered onto the images first. */
const openSite = (root: string): Promise<Site> => openReplicaSite(root, { recover: true });

test('a fresh replica killed as a sync starts does not come back "consistent" at the sync point with empty volumes', async () => {
  const root = tempDir();
  try {
    let s = await openSite(root);
    await replicaAt(s, 0);
    assert.equal(s.store.isFresh(), true);
    killAtNextSave(s.store);
    await assert.rejects(s.store.begin(100, ['v']));
    await closeSite(s);

    s = await openSite(root);
    try {
      // What the next handshake tells the primary: durable 100 and no sync cursor -> it streams 101.. (shipper.ts 442-457).
      const durable = s.store.durableSeq();
      const cursor = s.store.cursor();
      const state = s.store.syncState();
      assert.ok(cursor !== undefined || durable === 0, `after restart: durableSeq ${durable}, cursor ${JSON.stringify(cursor)}, syncState ${state}: the primary resumes at ${durable + 1} with no sync, over volumes that hold none of 1..${durable}`);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('a consistent replica killed as a staged delta sync starts keeps its point (or the staged sync), never jumps to the sync point', async () => {
  const root = tempDir();
  try {
    let s = await openSite(root);
    await replicaAt(s, 10);
    assert.equal(s.store.syncState(), 'consistent');
    // The primary folded 11..20 unshipped: a staged delta sync from 20 begins, and the process dies in it.
    killAtNextSave(s.store);
    await assert.rejects(s.store.begin(20, ['v']));
    await closeSite(s);

    s = await openSite(root);
    try {
      const durable = s.store.durableSeq();
      const staged = s.store.isStaging();
      const cursor = s.store.cursor();
      const state = s.store.syncState();
      // Volumes hold the point 10; the replica must not claim (nor ask the primary for records after) anything past it without a sync.
      assert.ok(staged || cursor !== undefined || durable <= 10, `after restart: durableSeq ${durable}, appliedSeq ${s.store.appliedSeq()}, staged ${staged}, cursor ${JSON.stringify(cursor)}, syncState ${state}; block 15 would never be written (records 11..20 are gone at the primary)`);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('a replica killed right after going back to the fork (diverged) still resyncs: no split-off write stays under the new primary\'s history', async () => {
  const root = tempDir();
  try {
    const g1 = { id: 'g1', fromSeq: 1, startedAt: '2024-01-01T00:00:00.000Z' };
    const g2 = { id: 'g2', fromSeq: 11, startedAt: '2024-01-02T00:00:00.000Z' };
    let s = await openSite(root);
    await s.store.acceptPrimary('A', [g1]);
    await s.store.ensureVolumes([VOL]);
    await s.store.store(range(1, 20), 20);
    await s.store.idle();
    await s.store.persist();
    // B was promoted at 10 (generation g2 from 11); this site (old primary side) holds 11..20 that B never saw.
    killAtReset(s.journal, true);
    await assert.rejects(s.store.acceptPrimary('B', [g1, g2]));
    await closeSite(s);

    s = await openSite(root);
    try {
      await s.store.acceptPrimary('B', [g1, g2]);
      const data = await s.volumes.get('v')!.image.read(15 * BS, BS);
      assert.ok(s.store.cursor() !== undefined, `after restart: durableSeq ${s.store.durableSeq()}, cursor ${JSON.stringify(s.store.cursor())}, syncState ${s.store.syncState()}; block 15 still holds split-off write ${data[0]} and B resumes at ${s.store.durableSeq() + 1} without a resync`);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('killed after a sync start was recorded, before its journal reset: the start redoes the reset and resumes the sync (fresh replica)', async () => {
  const root = tempDir();
  try {
    let s = await openSite(root);
    await replicaAt(s, 0);
    killAtReset(s.journal, false);
    await assert.rejects(s.store.begin(100, ['v']));
    await closeSite(s);

    s = await openSite(root);
    try {
      assert.equal(s.store.durableSeq(), 100, 'the journal was not reset to the sync point: the primary would resume the sync over a journal it does not follow');
      assert.equal(s.journal.headSeq(), 100);
      assert.deepEqual(s.store.cursor(), { fromSeq: 100, volume: 'v', offsetBytes: 0, compare: false });
      assert.equal(s.store.syncState(), 'syncing');
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('killed after a staged delta sync start was recorded, before its journal reset: still staged over the old point, the reset redone', async () => {
  const root = tempDir();
  try {
    let s = await openSite(root);
    await replicaAt(s, 10);
    killAtReset(s.journal, false);
    await assert.rejects(s.store.begin(20, ['v']));
    await closeSite(s);

    s = await openSite(root);
    try {
      assert.equal(s.store.isStaging(), true, 'the staged sync was lost');
      assert.equal(s.store.durableSeq(), 20);
      assert.ok(s.store.cursor() !== undefined);
      // The volumes still hold the old consistent point, whole.
      for (const r of range(1, 10)) assert.ok((await s.volumes.get('v')!.image.read(r.offsetBytes, BS)).equals(r.data!), `block of record ${r.seq}`);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});
