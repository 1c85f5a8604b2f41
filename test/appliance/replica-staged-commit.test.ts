/**
 * The replica's staged delta sync (src/appliance/replica.ts) once the sync has ended: everything
 * through its consistent point is stored here, so the sync is complete and is the newest
 * consistent state. It must be committed without waiting for the primary to write again (a
 * process stopped between SyncDone and the commit), and a promotion must commit it rather than
 * throw it away. A sync whose journal tail is still missing stays staged, and is given up by a
 * promotion. Real Journal, FileVolume images and ReplicaStore, restarted by reopening them.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { SYNC_CHUNK_BYTES, verifyHashes } from '../../src/replication/protocol';
import type { ReplicaStore } from '../../src/appliance/replica';
import { removeDir, tempDir } from '../helpers/appliance';
import { BS, closeSite, openSite, range, VOL, type Site } from '../helpers/replica-site';

/** The byte the first sync chunk (blocks 0..15) is staged with. */
const CHUNK_BYTE = 0xee;

/** The byte a block of the volume is filled with (every byte of it must be that byte). */
async function blockByte(s: Site, block: number): Promise<number> {
  const data = await s.volumes.get('v')!.image.read(block * BS, BS);
  assert.ok(data.every((b) => b === data[0]), `block ${block} is not one fill`);
  return data[0];
}

/**
 * A replica consistent at 10, then a delta sync staged over it from 20 (the first chunk
 * staged), with the records 21..`storedTo` stored and, if `endAt` is given, SyncDone for
 * consistency at `endAt`. The commit SyncDone would start is held back by `holdCommit`.
 */
async function stagedSite(root: string, storedTo: number, endAt: number | undefined, holdCommit: (store: ReplicaStore) => void): Promise<Site> {
  const s = await openSite(root);
  await s.store.acceptPrimary('primary', []);
  await s.store.ensureVolumes([VOL]);
  await s.store.store(range(1, 10), 10);
  await s.store.idle();
  await s.store.persist();
  assert.equal(s.store.syncState(), 'consistent');
  // The primary folded records the replica lacks: a delta sync from 20, staged whole.
  await s.store.begin(20, ['v']);
  assert.ok(s.store.isStaging());
  await s.store.chunk('v', 0, SYNC_CHUNK_BYTES, Buffer.alloc(SYNC_CHUNK_BYTES, CHUNK_BYTE));
  if (storedTo > 20) await s.store.store(range(21, storedTo), storedTo);
  holdCommit(s.store);
  if (endAt !== undefined) await s.store.end(20, endAt, 1000 + endAt);
  return s;
}

type Internals = { commit: () => Promise<void> };

/** The process is killed right after SyncDone is stored, before the commit marks itself started. */
const killedBeforeCommit = (store: ReplicaStore) => {
  (store as unknown as Internals).commit = () => new Promise(() => undefined);
};

/** The commit SyncDone starts fails once (an I/O error); the store retries it a second later. */
const commitFailsOnce = (store: ReplicaStore) => {
  (store as unknown as Internals).commit = async () => {
    delete (store as unknown as Partial<Internals>).commit; // the prototype's commit from now on
    throw new Error('EIO: simulated');
  };
};

async function assertNewPoint(s: Site, seq: number): Promise<void> {
  assert.equal(s.store.isStaging(), false);
  assert.equal(s.store.visibleSeq(), seq);
  assert.equal(s.store.appliedSeq(), seq);
  assert.equal(s.store.appliedTimeMs(), 1000 + seq);
  assert.equal(await blockByte(s, 1), CHUNK_BYTE, 'the staged chunk is in the volume');
  for (let b = 21; b <= seq; b++) assert.equal(await blockByte(s, b), b, `record ${b} is applied`);
}

test('replica: a staged delta sync that ended but whose commit never began is committed when the store reopens, before any new write', async () => {
  const root = tempDir();
  let s = await stagedSite(root, 25, 25, killedBeforeCommit);
  await closeSite(s);
  try {
    s = await openSite(root);
    // Straight after the restart, before the handshake and with nothing new from the (idle) primary.
    await assertNewPoint(s, 25);
    await s.store.acceptPrimary('primary', []);
    await s.store.ensureVolumes([VOL]);
    assert.equal(s.store.syncState(), 'consistent');
    // Verify compares (it answered "syncing" while the commit waited for a write).
    const expected = Buffer.alloc(SYNC_CHUNK_BYTES, CHUNK_BYTE);
    assert.deepEqual(await s.store.verify('v', 0, SYNC_CHUNK_BYTES, verifyHashes(expected)), { mismatched: [] });
    // Replication goes on from there.
    await s.store.store(range(26, 27), 27);
    await s.store.idle();
    assert.equal(s.store.appliedSeq(), 27);
    assert.equal(await blockByte(s, 27), 27);
  } finally {
    await closeSite(s);
    removeDir(root);
  }
});

test('replica: a staged delta sync whose journal tail is still missing stays staged over its old point when the store reopens', async () => {
  const root = tempDir();
  let s = await stagedSite(root, 23, 25, () => undefined);
  assert.ok(s.store.isStaging(), 'records 24..25 have not arrived');
  await closeSite(s);
  try {
    s = await openSite(root);
    assert.equal(s.store.isStaging(), true);
    assert.equal(s.store.visibleSeq(), 10);
    assert.equal(await blockByte(s, 1), 1, 'the volume still holds the old consistent point');
    assert.equal(await blockByte(s, 21), 0);
    // The rest of the tail: committed.
    await s.store.acceptPrimary('primary', []);
    await s.store.store(range(24, 25), 25);
    await s.store.idle();
    await assertNewPoint(s, 25);
  } finally {
    await closeSite(s);
    removeDir(root);
  }
});

test('replica: a promotion commits a staged delta sync that is complete (the newest consistent state) instead of giving it up', async () => {
  const root = tempDir();
  const s = await stagedSite(root, 25, 25, commitFailsOnce);
  try {
    assert.ok(s.store.isStaging(), 'the commit failed; its retry is a second away');
    const seq = await s.store.settleStagingForPromotion();
    assert.equal(seq, 25);
    await assertNewPoint(s, 25);
    assert.equal(s.journal.headSeq(), 25, 'the stored tail is kept');
    // The pending retry finds nothing to commit.
    await new Promise((r) => setTimeout(r, 1200));
    await s.store.idle();
    await assertNewPoint(s, 25);
  } finally {
    await closeSite(s);
    removeDir(root);
  }
});

test('replica: a promotion gives up a staged delta sync still running: the volumes stay at the point it was staged over', async () => {
  const root = tempDir();
  const s = await stagedSite(root, 23, undefined, () => undefined);
  try {
    const seq = await s.store.settleStagingForPromotion();
    assert.equal(seq, 10);
    assert.equal(s.store.isStaging(), false);
    assert.equal(s.store.appliedSeq(), 10);
    assert.equal(s.journal.headSeq(), 10, 'the tail after the sync point is dropped');
    assert.equal(await blockByte(s, 1), 1);
    assert.equal(await blockByte(s, 21), 0);
  } finally {
    await closeSite(s);
    removeDir(root);
  }
});

test('replica: a promotion gives up a staged delta sync that ended but lacks part of its journal tail', async () => {
  const root = tempDir();
  const s = await stagedSite(root, 23, 25, () => undefined);
  try {
    assert.equal(await s.store.settleStagingForPromotion(), 10);
    assert.equal(s.store.isStaging(), false);
    assert.equal(await blockByte(s, 1), 1);
    assert.equal(await blockByte(s, 21), 0);
  } finally {
    await closeSite(s);
    removeDir(root);
  }
});
