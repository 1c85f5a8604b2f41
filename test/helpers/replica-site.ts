/**
 * One replica site's data directory opened the way the appliance's replica start opens it (the
 * volumes' images, the journal, then the ReplicaStore), for tests that restart a replica by
 * closing and reopening it. One volume, `v`; record `seq` fills block `seq` with the byte `seq`.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { ReplicaStore } from '../../src/appliance/replica';
import { silentLogger } from '../../src/common/logger';
import { Journal } from '../../src/journal/wal';
import type { ReplicatedRecord } from '../../src/replication/ports';
import { SYNC_CHUNK_BYTES } from '../../src/replication/protocol';
import { FileVolume } from '../../src/volume/file-volume';
import { recoverImages } from '../../src/volume/journaled';
import { Bookmarks } from '../../src/journal/bookmarks';
import { ApplyGate, ReplicaVolume } from '../../src/volume/replica';

export const BS = 4096;
export const VOL = { name: 'v', sizeBytes: 64 * SYNC_CHUNK_BYTES, blockSize: 512, uuid: '' };
/** Record `seq` writes block `seq` full of the byte `seq`. */
export const rec = (seq: number): ReplicatedRecord => ({ seq, timeMs: 1000 + seq, volume: 'v', op: 'write', offsetBytes: seq * BS, lengthBytes: BS, data: Buffer.alloc(BS, seq) });
export const range = (a: number, b: number): ReplicatedRecord[] => Array.from({ length: b - a + 1 }, (_, i) => rec(a + i));

export interface Site {
  journal: Journal;
  store: ReplicaStore;
  volumes: Map<string, ReplicaVolume>;
}

/**
 * Open the site. `recover`: as the appliance's replica start after a crash, before the store
 * opens: finish a staged sync's give-up a kill cut short, cut a coalesced batch a kill left
 * partial, redo a staged commit a kill cut short, and replay the journal's tail onto the images
 * (not while a sync is staged: its stored records are held until it commits).
 */
export async function openSite(root: string, opts: { recover?: boolean } = {}): Promise<Site> {
  const journal = await Journal.open({ dir: path.join(root, 'journal') });
  const gate = new ApplyGate();
  const volumes = new Map<string, ReplicaVolume>();
  const images = new Map<string, FileVolume>();
  const volumesDir = path.join(root, 'volumes');
  mkdirSync(volumesDir, { recursive: true });
  if ((await FileVolume.list(volumesDir)).includes('v')) {
    const img = await FileVolume.open({ dir: volumesDir, name: 'v', readOnly: false });
    images.set('v', img);
    volumes.set('v', new ReplicaVolume(img, gate));
    await journal.registerVolume('v');
  }
  const stateDir = path.join(root, 'state');
  if (opts.recover) {
    await ReplicaStore.finishAbandonedStaging(stateDir, root, journal, silentLogger(), await Bookmarks.load(journal));
    await journal.cutPartialCoalesced();
    const staged = await ReplicaStore.stagedAtStart(stateDir);
    if (staged?.committing) await ReplicaStore.finishStagedCommit(root, images, silentLogger());
    if (!staged || staged.committing) await recoverImages(journal, images);
  }
  const store = await ReplicaStore.open({ siteId: 'replica', journal, volumesDir, stateDir, volumes, gate, onVolume: async () => undefined, logger: silentLogger() });
  return { journal, store, volumes };
}

export async function closeSite(s: Site): Promise<void> {
  // The store has no close of its own: its staging images (a staged sync) are closed here.
  await (s.store as unknown as { closeStaging: (remove: boolean) => Promise<void> }).closeStaging(false);
  for (const v of s.volumes.values()) await v.image.close();
  await s.journal.close();
}

/** A replica following `primary` with the volume `v`, holding the records 1..`upTo` (none if 0), applied and persisted. */
export async function replicaAt(s: Site, upTo: number): Promise<void> {
  await s.store.acceptPrimary('primary', []);
  await s.store.ensureVolumes([VOL]);
  if (!upTo) return;
  await s.store.store(range(1, upTo), upTo);
  await s.store.idle();
  await s.store.persist();
}

/** The process dies at the store's next state file write. */
export function killAtNextSave(store: ReplicaStore): void {
  (store as unknown as { save: () => Promise<void> }).save = () => Promise.reject(new Error('SIGKILL (simulated) before the state file was written'));
}

/** The process dies right before (`after`: false) or right after the journal's next reset. */
export function killAtReset(journal: Journal, after: boolean): void {
  const j = journal as unknown as { resetTo: (seq: number) => Promise<void> };
  const real = j.resetTo.bind(journal);
  j.resetTo = async (seq: number) => {
    if (after) await real(seq);
    throw new Error(`SIGKILL (simulated) ${after ? 'after' : 'before'} the journal reset`);
  };
}
