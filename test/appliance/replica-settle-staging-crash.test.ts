/**
 * src/appliance/replica.ts settleStagingForPromotion: a promotion that gives up a staged delta
 * sync (its journal tail still missing) removes the staging area (the staged chunks and their
 * lists) and takes the journal back to the point the volumes hold. A kill anywhere in that must
 * restart the site either still staging the sync with its chunks, or consistent at the held
 * point with the sync forgotten; never staging a sync whose chunks are gone (the rest of the
 * tail would then commit it without them: records applied over the old point without the chunk
 * changes, a state the primary never had, reported consistent). Real Journal, FileVolume and
 * ReplicaStore; the kill is simulated by failing the step right after the point where it would
 * land, then reopening the data directory the way the appliance's replica start does.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { Bookmarks } from '../../src/journal/bookmarks';
import { SYNC_CHUNK_BYTES } from '../../src/replication/protocol';
import { removeDir, tempDir } from '../helpers/appliance';
import { BS, closeSite, killAtNextSave, killAtReset, openSite as openReplicaSite, range, replicaAt, type Site } from '../helpers/replica-site';

/** Open the site as a restart after a kill does (see the helper's `recover`). */
const openSite = (root: string): Promise<Site> => openReplicaSite(root, { recover: true });

const CHUNK_BYTE = 0xee;

async function blockByte(s: Site, block: number): Promise<number> {
  return (await s.volumes.get('v')!.image.read(block * BS, BS))[0];
}

/**
 * A replica consistent at 10, staging a delta sync from 20 (the primary folded 11..20 unshipped):
 * the first chunk (blocks 0..15, full of CHUNK_BYTE) staged, records 21..23 stored, the sync
 * ended with its consistent point at 25. The tail 24..25 has not arrived: the sync stays staged.
 */
async function stagedWithTailMissing(root: string): Promise<Site> {
  const s = await openSite(root);
  await replicaAt(s, 10);
  await s.store.begin(20, ['v']);
  await s.store.chunk('v', 0, SYNC_CHUNK_BYTES, Buffer.alloc(SYNC_CHUNK_BYTES, CHUNK_BYTE));
  await s.store.store(range(21, 23), 23);
  await s.store.end(20, 25, 1025);
  assert.equal(s.store.isStaging(), true, 'records 24..25 are missing: still staged');
  return s;
}

/**
 * The primary, back after the restart (it holds records 21..25): with no sync cursor from the
 * replica and its durable point within the retained journal, it streams the records after it.
 * (Behind that, it starts a new sync: not modelled, the volumes stay as they are.)
 */
async function primaryResumes(s: Site): Promise<void> {
  await s.store.acceptPrimary('primary', []);
  const durable = s.store.durableSeq();
  if (s.store.cursor() !== undefined || durable < 20 || durable >= 25) return;
  await s.store.store(range(durable + 1, 25), 25);
  await s.store.idle();
}

/** The volume shows the held point 10 (`at`: 10) or the sync's point 25 with the staged chunk (`at`: 25); nothing in between. */
async function assertVolumeAt(s: Site, at: 10 | 25): Promise<void> {
  const b1 = await blockByte(s, 1);
  const b21 = await blockByte(s, 21);
  const shown = `block 1 = ${b1}, block 21 = ${b21} (appliedSeq ${s.store.appliedSeq()}, staging ${s.store.isStaging()}, syncState ${s.store.syncState()})`;
  if (at === 10) {
    for (const r of range(1, 10)) assert.equal(await blockByte(s, r.seq), r.seq, `block ${r.seq} of the held point 10; ${shown}`);
    assert.equal(b21, 0, `record 21 applied over the held point 10 without the staged chunk; ${shown}`);
  } else {
    assert.equal(b1, CHUNK_BYTE, `the volume is at 25 without the staged chunk; ${shown}`);
    for (let b = 21; b <= 25; b++) assert.equal(await blockByte(s, b), b, `record ${b}; ${shown}`);
  }
}

/** Consistent at the held point 10, the given-up sync forgotten: the primary starts a new one. */
async function assertGivenUp(s: Site): Promise<void> {
  assert.equal(s.store.isStaging(), false, 'still staging the given-up sync');
  assert.equal(s.store.syncState(), 'consistent');
  assert.equal(s.store.durableSeq(), 10);
  assert.equal(s.store.appliedSeq(), 10);
  assert.equal(s.store.appliedTimeMs(), 1010);
  assert.equal(s.journal.headSeq(), 10, 'the stored tail of the given-up sync is still in the journal');
  assert.equal(s.store.cursor(), undefined);
}

test('a promotion killed before it recorded giving up a staged sync: the restart still stages it, chunks kept, and commits it with them', async () => {
  const root = tempDir();
  try {
    let s = await stagedWithTailMissing(root);
    killAtNextSave(s.store);
    await assert.rejects(s.store.settleStagingForPromotion());
    await closeSite(s);

    s = await openSite(root);
    try {
      assert.equal(s.store.isStaging(), true);
      await assertVolumeAt(s, 10);
      await primaryResumes(s);
      assert.equal(s.store.isStaging(), false, 'the complete sync was not committed');
      await assertVolumeAt(s, 25);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('a promotion killed after the staging area went, before the journal reset: the restart finishes giving the sync up, never commits it without its chunks', async () => {
  const root = tempDir();
  try {
    let s = await stagedWithTailMissing(root);
    // A bookmark the primary sent for a point of the stored tail, and one at the held point.
    await (await Bookmarks.load(s.journal)).add({ name: 'in-tail', seq: 22, timeMs: 1022 });
    await (await Bookmarks.load(s.journal)).add({ name: 'held', seq: 10, timeMs: 1010 });
    killAtReset(s.journal, false);
    await assert.rejects(s.store.settleStagingForPromotion());
    await closeSite(s);

    s = await openSite(root);
    try {
      const marks = await Bookmarks.load(s.journal);
      assert.equal(marks.get('in-tail'), undefined, 'a bookmark of the given-up tail is still offered');
      assert.equal(marks.get('held')?.seq, 10);
      await primaryResumes(s);
      await assertVolumeAt(s, 10);
      await assertGivenUp(s);
      assert.equal(existsSync(path.join(root, 'staging')), false);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('a promotion killed after the journal reset, before the state file was written: the restart is consistent at the held point, not staging a sync whose tail is gone', async () => {
  const root = tempDir();
  try {
    let s = await stagedWithTailMissing(root);
    killAtReset(s.journal, true);
    await assert.rejects(s.store.settleStagingForPromotion());
    await closeSite(s);

    s = await openSite(root);
    try {
      await assertGivenUp(s);
      await assertVolumeAt(s, 10);
      assert.equal(existsSync(path.join(root, 'staging')), false);
      // A promotion now has nothing to settle and is not refused as "syncing".
      assert.equal(await s.store.settleStagingForPromotion(), 10);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});

test('giving up a staged sync fails part-way without a crash: the store stays marked (no commit, no chunk on the live volumes) and the next promotion finishes it', async () => {
  const root = tempDir();
  try {
    const s = await stagedWithTailMissing(root);
    try {
      const j = s.journal as unknown as { resetTo: (seq: number) => Promise<void> };
      const real = j.resetTo.bind(s.journal);
      j.resetTo = () => Promise.reject(new Error('EIO: simulated'));
      await assert.rejects(s.store.settleStagingForPromotion(), /EIO/);
      assert.equal(s.store.stagingAbandonUnfinished(), true, 'the appliance would listen for the primary again over a half given-up sync');
      assert.equal(s.store.visibleSeq(), 10);
      await assertVolumeAt(s, 10);
      j.resetTo = real;
      assert.equal(await s.store.settleStagingForPromotion(), 10);
      assert.equal(s.store.stagingAbandonUnfinished(), false);
      await assertGivenUp(s);
      await assertVolumeAt(s, 10);
    } finally {
      await closeSite(s);
    }
  } finally {
    removeDir(root);
  }
});
