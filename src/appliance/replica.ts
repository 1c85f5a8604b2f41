/**
 * The replica's storage side of replication (the receiver's sink): records from the primary are
 * made durable in this site's own journal (with the primary's sequence numbers and times)
 * before they are acknowledged, then applied to the volumes in order, a segment at a time under
 * the apply gate. Image sync chunks go straight to the images of a replica that holds nothing
 * consistent yet (a first sync). A replica that is consistent and falls behind the primary's
 * retained journal (the primary folded records it never shipped) gets a delta sync that is
 * staged whole: chunks go to staging images, records after the sync point are stored but held,
 * and the volumes keep showing the old consistent point until everything through the sync's
 * consistent point is here; then one step under the apply gate moves them there. A crash while
 * staging resumes the sync; a crash while committing redoes the commit before serving, and so
 * does one between the sync's end and its commit, once that tail is stored.
 * Progress is persisted so an interrupted sync resumes where it stopped. The state file says
 * what the volumes hold.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { releaseBuffer } from '../common/buffer-pool';
import type { Logger } from '../common/logger';
import { randomUUID } from 'node:crypto';
import { ImageFileTarget, Journal, type JournalRecord } from '../journal/wal';
import { DATA_FORMAT, DATA_VERSION } from './datadir';
import { readJsonFile, syncPath, writeJsonFile } from '../common/json-file';
import { compareLineage, isLineage, LineageFile } from './lineage';
import { ReplicationError, ReplicationErrorCode } from '../replication/errors';
import type { BookmarkDescriptor, ReceiverSink, RemovedVolumeDescriptor, ReplicatedRecord, SyncCursor, SyncSink, VerifyAnswer, VolumeDescriptor } from '../replication/ports';
import { isBookmark, type Bookmarks } from '../journal/bookmarks';
import { chunkHash, SYNC_CHUNK_BYTES, verifyHashes } from '../replication/protocol';
import { FileVolume } from '../volume/file-volume';
import { applyInOrder, applyToVolume, replayOnto } from '../volume/journaled';
import { writeChangedBlocksAsOf } from '../volume/rewind';
import { resolvePoint } from '../journal/point-in-time';
import { ApplyGate, ReplicaVolume } from '../volume/replica';
import type { TestCopyVolume } from '../volume/test-copy';

export interface ReplicaState {
  /** The primary this replica follows (set at the first handshake). */
  primarySiteId?: string;
  /** Nothing was ever written to the volumes here. */
  fresh: boolean;
  /** An image sync in progress. */
  sync?: SyncCursor;
  /**
   * A sync start was recorded (`sync`, `staged`) but its journal reset to this sequence may not
   * have happened: a start redoes it before anything else (see begin).
   */
  syncResetPending?: number;
  /** After a sync: consistent once everything up to here is applied. */
  consistentSeq: number;
  /** Primary's time of the last applied record (the consistent point's time). */
  appliedTimeMs: number;
  appliedSeq: number;
  /**
   * A delta sync staged whole: the volumes still hold the consistent point `heldSeq`; once the
   * sync ended (`consistentSeq` known) and the journal tail through it is stored, it is committed.
   * `abandoning`: a promotion gives it up (settleStagingForPromotion); the staging area and the
   * journal after `heldSeq` may already be gone: a start finishes that first
   * (finishAbandonedStaging), never resumes or commits the sync.
   */
  staged?: { heldSeq: number; heldTimeMs: number; consistentSeq?: number; consistentTimeMs?: number; committing?: boolean; abandoning?: boolean };
  /**
   * A promotion at an earlier point is taking the volumes back from `fromSeq` to `toSeq`. A
   * start that finds it either brings them forward again (the journal still holds the records
   * after `toSeq`) or finds them there (it no longer does): finishInterruptedRewind.
   */
  rewinding?: { toSeq: number; toTimeMs: number; fromSeq: number; imagesDone?: boolean };
  /** The volumes the primary removed, as its last handshake said: each copy is retired once every write up to `lastSeq` is applied here. */
  primaryRemoved?: (RemovedByPrimary & { incomplete?: boolean })[];
}

type RemovedByPrimary = RemovedVolumeDescriptor;

const STAGING_DIR = 'staging';
/** Tests only: OFFSITE_FAILPOINT=replica-commit-midway kills the process half-way through a staged commit. */
const COMMIT_FAILPOINT = process.env.OFFSITE_FAILPOINT === 'replica-commit-midway';
/** Tests only: OFFSITE_FAILPOINT=promote-rewind-midway kills the process after the second block run a promotion at an earlier point rewrote. */
const REWIND_FAILPOINT = process.env.OFFSITE_FAILPOINT === 'promote-rewind-midway';

export type ReplicaSyncState = 'syncing' | 'consistent';

interface Pending {
  records: ReplicatedRecord[];
  toSeq: number;
  /** Pooled buffers holding the records' data: given back once they are applied. */
  payloads?: Buffer[];
  /** An online-verify comparison placed here in the stream (no records): run when its turn comes. */
  verify?: { volume: string; offsetBytes: number; lengthBytes: number; hashes: Buffer; answer: (a: VerifyAnswer) => void; data?: Buffer };
}

/** The state once a staged sync is given up: the volumes hold its held point, no sync is under way. */
function forgetStaged(state: ReplicaState, st: NonNullable<ReplicaState['staged']>): void {
  state.appliedSeq = st.heldSeq;
  state.appliedTimeMs = st.heldTimeMs;
  state.staged = undefined;
  state.sync = undefined;
  state.syncResetPending = undefined;
  state.consistentSeq = 0;
}

/** Queued comparisons that will not run (the queue was reset under them) answer "not ready". */
function cancelVerifies(dropped: readonly Pending[], why: string): void {
  for (const p of dropped) p.verify?.answer({ notReady: why });
}

export class ReplicaStore implements ReceiverSink, SyncSink {
  readonly sync: SyncSink = this;
  private state: ReplicaState;
  private durable: number;
  private applied: number;
  private queue: Pending[] = [];
  private applying?: Promise<void>;
  /** The state file's writes, one at a time (see save). */
  private saving: Promise<void> = Promise.resolve();
  private applyError?: Error;
  private syncBytesSinceSave = 0;
  /** The primary's bookmarks, kept here (storeBookmarks). */
  bookmarks?: Bookmarks;
  /** Throw-away test copies (offsite test-failover) that must keep their view as records land. */
  readonly testCopies = new Map<string, TestCopyVolume>();
  /** Coalesced-batch marks past the durable head may exist (see store); true at start, for a process killed mid-store. */
  private marksPastDurable = true;
  /** Copies retired here (the primary removed the volume): a stray record for one is skipped, not an error. */
  readonly retired = new Set<string>();
  /** A primary's lineage was checked in this process's life (until then nothing is trimmed). */
  primaryChecked = false;
  /** A sync rebuilt the images outside the journal: point-in-time history restarts once consistent. */
  rebaseNeeded = false;
  private readonly stats = { recordsApplied: 0, bytesApplied: 0, segmentsApplied: 0, syncChunks: 0, syncBytes: 0, verifiedBytes: 0, verifyMismatches: 0, repairedBytes: 0 };
  /** Staging images and the chunks staged in each (offset → length), while a delta sync is staged. */
  private staging?: { images: Map<string, FileVolume>; chunks: Map<string, Map<number, number>> };
  private committing?: Promise<void>;

  private readonly lineageFile: LineageFile;
  private readonly dataRoot: string;

  private constructor(
    readonly siteId: string,
    private readonly journal: Journal,
    private readonly volumesDir: string,
    private readonly statePath: string,
    readonly volumes: Map<string, ReplicaVolume>,
    readonly gate: ApplyGate,
    private readonly onVolume: (v: ReplicaVolume, created: boolean) => Promise<void>,
    private readonly logger: Logger,
    state: ReplicaState,
    /** A volume grew with the primary's (its LU reports the new capacity). */
    private readonly onGrown?: (v: ReplicaVolume) => void,
  ) {
    this.state = state;
    this.dataRoot = path.dirname(volumesDir);
    this.lineageFile = LineageFile.in(this.dataRoot);
    this.durable = journal.headSeq();
    this.applied = journal.checkpointSeq();
    this.state.appliedSeq = this.applied;
    this.state.appliedTimeMs = journal.timeOf(this.applied) ?? state.appliedTimeMs;
  }

  static async open(opts: {
    siteId: string;
    journal: Journal;
    volumesDir: string;
    stateDir: string;
    volumes: Map<string, ReplicaVolume>;
    gate: ApplyGate;
    onVolume: (v: ReplicaVolume, created: boolean) => Promise<void>;
    onGrown?: (v: ReplicaVolume) => void;
    logger: Logger;
    bookmarks?: Bookmarks;
  }): Promise<ReplicaStore> {
    const statePath = path.join(opts.stateDir, 'replica.json');
    // The appliance does this before it recovers the images; a no-op then.
    await ReplicaStore.finishAbandonedStaging(opts.stateDir, path.dirname(opts.volumesDir), opts.journal, opts.logger);
    let state: ReplicaState;
    try {
      state = JSON.parse(await fsp.readFile(statePath, 'utf8')) as ReplicaState;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      state = { fresh: opts.journal.headSeq() === 0, consistentSeq: 0, appliedTimeMs: 0, appliedSeq: 0 };
    }
    await fsp.mkdir(opts.stateDir, { recursive: true, mode: 0o700 });
    const store = new ReplicaStore(opts.siteId, opts.journal, opts.volumesDir, statePath, opts.volumes, opts.gate, opts.onVolume, opts.logger, state, opts.onGrown);
    store.bookmarks = opts.bookmarks;
    if (state.syncResetPending !== undefined) await store.finishSyncStart(state.syncResetPending);
    if (state.staged?.committing) {
      // The appliance finished the interrupted commit (finishStagedCommit + journal recovery) before opening us.
      state.staged = undefined;
      state.consistentSeq = 0;
      await store.save();
      await fsp.rm(path.join(store.dataRoot, STAGING_DIR), { recursive: true, force: true });
    } else if (state.staged) {
      await store.openStaging(false);
      // A process stopped after the sync ended (SyncDone saved) and before its commit began: the
      // journal may already hold everything through the consistent point. Only a store() would
      // commit then, and an idle primary sends none: the volumes would keep the older point
      // (verify answering "syncing", a promotion giving up a complete sync) until it writes again.
      // Committed here, before anything is served, like a commit a crash cut short.
      store.maybeCommit();
      await store.idle();
    }
    return store;
  }

  /**
   * A sync start that a crash cut between recording it and resetting the journal: the reset is
   * redone (it is idempotent: nothing is stored between the two), so that the journal's head is
   * the sync's starting point, as the primary expects when it resumes the sync.
   */
  private async finishSyncStart(fromSeq: number): Promise<void> {
    const head = this.journal.headSeq();
    await this.resetForSync(fromSeq);
    this.logger.warn({ fromSeq, journalHead: head }, 'a sync start was interrupted before the journal was reset to its starting point: reset redone before serving');
  }

  /** The staged delta sync recorded in a replica's state file, if any (read before the journal is recovered). */
  static async stagedAtStart(stateDir: string): Promise<ReplicaState['staged']> {
    try {
      return (JSON.parse(await fsp.readFile(path.join(stateDir, 'replica.json'), 'utf8')) as ReplicaState).staged;
    } catch {
      return undefined;
    }
  }

  /**
   * At start, before the journal's tail is replayed onto the images: a staged delta sync that a
   * promotion was giving up when the process stopped (settleStagingForPromotion). Its staging
   * area (chunks and their lists) may be gone, its stored tail too: resuming it would commit the
   * sync without its chunks, and replaying that tail would move the volumes past the point they
   * hold without them. The give-up is finished instead: the journal back to the held point, the
   * staging area removed, the sync forgotten (the primary starts a new one at the next handshake).
   * Every step is idempotent. Returns whether there was one to finish.
   */
  static async finishAbandonedStaging(stateDir: string, dataRoot: string, journal: Journal, logger: Logger, bookmarks?: Bookmarks): Promise<boolean> {
    const file = path.join(stateDir, 'replica.json');
    const state = (await readJsonFile(file)) as ReplicaState | undefined;
    const st = state?.staged;
    if (!state || !st?.abandoning) return false;
    await journal.resetTo(st.heldSeq);
    // Points of the given-up tail are gone with it (as at a promotion: appliance.ts).
    await bookmarks?.dropAfter(st.heldSeq);
    await fsp.rm(path.join(dataRoot, STAGING_DIR), { recursive: true, force: true });
    forgetStaged(state, st);
    await writeJsonFile(file, state);
    logger.warn({ heldSeq: st.heldSeq }, 'a promotion was giving up a staged delta sync when the appliance stopped: finished before serving; the volumes stay at their consistent point');
    return true;
  }

  /**
   * Redo the first half of a commit a crash interrupted: copy every staged chunk into the images.
   * The caller then replays the stored journal tail onto them (the second half).
   */
  static async finishStagedCommit(dataRoot: string, images: ReadonlyMap<string, FileVolume>, logger: Logger): Promise<void> {
    const dir = path.join(dataRoot, STAGING_DIR);
    let chunks = 0;
    for (const [name, image] of images) {
      const list = await readChunkList(dir, name);
      if (!list.size) continue;
      const staged = await FileVolume.open({ dir, name, readOnly: true });
      try {
        await copyChunks(list, staged, image);
        chunks += list.size;
      } finally {
        await staged.close();
      }
      await image.flush();
    }
    logger.warn({ chunks }, 'a staged delta sync was being committed when the appliance stopped: commit redone before serving');
  }

  /**
   * At start, before anything else touches the images: a promotion at an earlier point that a
   * crash cut short (see rewindForPromotion). While the journal still holds the records after
   * the point, the volumes may be half way back: those records are applied again, which brings
   * every volume forward to where it was, and nothing was promoted. Once it no longer holds
   * them, the volumes are at the point. Either way the site starts as the replica it still is.
   * Returns where the volumes are, or undefined when there was nothing to finish.
   */
  static async finishInterruptedRewind(stateDir: string, journal: Journal, images: ReadonlyMap<string, FileVolume>, logger: Logger, bookmarks?: Bookmarks): Promise<{ seq: number; historyRestarted: boolean } | undefined> {
    const file = path.join(stateDir, 'replica.json');
    const state = (await readJsonFile(file)) as ReplicaState | undefined;
    const r = state?.rewinding;
    if (!state || !r) return undefined;
    const head = journal.headSeq();
    const forward = !r.imagesDone && head > r.toSeq;
    if (r.imagesDone) {
      // The images went back whole: the rest of the promotion's reset is done again (both steps are idempotent).
      await bookmarks?.dropAfter(r.toSeq);
      await journal.resetTo(r.toSeq);
    }
    if (forward) {
      const { records } = await replayOnto(journal, images, r.toSeq, head, logger);
      logger.warn({ toSeq: r.toSeq, fromSeq: r.fromSeq, records }, 'a promotion at an earlier point was cut short: the volumes are brought forward again to where they were (nothing was promoted; the later writes were saved aside too); promote again');
    } else {
      state.appliedSeq = r.toSeq;
      state.appliedTimeMs = r.toTimeMs;
      logger.warn({ toSeq: r.toSeq, fromSeq: r.fromSeq }, 'a promotion at an earlier point was cut short after the volumes went back: they hold that point, still as a replica; promote again');
    }
    state.rewinding = undefined;
    await writeJsonFile(file, state);
    return { seq: forward ? head : r.toSeq, historyRestarted: !forward };
  }

  /**
   * Promotion at an earlier point (offsite promote --seq/--time, after a bad write reached the
   * replica): the volumes go back to the state right after that point. Everything after it is
   * saved aside first (`split-<time>/`, like a demotion's split-off writes), and the intent is
   * saved before any image changes (finishInterruptedRewind). Only the blocks written since
   * the point are rewritten. The journal then restarts at the point, its history (when kept)
   * from the images as they are then.
   */
  /** Throws as rewindForPromotion would for a point the retained history cannot give. */
  async checkRewindPoint(at: { seq?: number; timeMs?: number }): Promise<void> {
    await this.journal.holdHistory(() => resolvePoint(this.journal, at));
  }

  /** A promotion at an earlier point began to take the volumes back and did not finish. */
  rewindUnfinished(): boolean {
    return this.state.rewinding !== undefined;
  }

  async rewindForPromotion(at: { seq?: number; timeMs?: number }): Promise<{ seq: number; timeMs?: number; fromSeq: number; savedTo?: string; blocks: number }> {
    await this.idle();
    const now = this.applied;
    const res = await this.journal.holdHistory(async () => {
      const { seq, timeMs } = await resolvePoint(this.journal, at);
      if (seq >= now) return { seq: now, timeMs: this.state.appliedTimeMs, fromSeq: now, blocks: 0 };
      const savedTo = await this.saveSplit(seq);
      this.state.rewinding = { toSeq: seq, toTimeMs: timeMs ?? 0, fromSeq: now };
      await this.save();
      let blocks = 0;
      let runs = 0;
      await this.gate.exclusive(async () => {
        for (const v of this.volumes.values()) {
          const r = await writeChangedBlocksAsOf(this.journal, v.name, v.image, seq, now, async (offsetBytes, data) => {
            await v.image.write(offsetBytes, data);
            if (REWIND_FAILPOINT && ++runs === 2) {
              await v.image.flush();
              process.kill(process.pid, 'SIGKILL');
            }
          });
          blocks += r.blocks;
        }
        for (const v of this.volumes.values()) await v.image.flush();
        // The volumes hold the point: from here a restart finishes the reset, never rolls forward
        // (the reset below is not atomic: a journal cut short in it cannot say where the images are).
        this.state.rewinding = { toSeq: seq, toTimeMs: timeMs ?? 0, fromSeq: now, imagesDone: true };
        await this.save();
        await this.bookmarks?.dropAfter(seq);
        await this.journal.resetTo(seq);
        this.durable = this.applied = seq;
        this.state.appliedSeq = seq;
        this.state.appliedTimeMs = timeMs ?? 0;
      });
      this.state.rewinding = undefined;
      await this.save();
      return { seq, timeMs, fromSeq: now, savedTo, blocks };
    });
    if (this.journal.keepsHistory && res.seq < now) await this.rebaseHistory();
    return res;
  }

  /** Open (or, with `wipe`, recreate) the staging images and chunk lists. */
  private async openStaging(wipe: boolean): Promise<void> {
    await this.closeStaging(wipe);
    const dir = path.join(this.dataRoot, STAGING_DIR);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const images = new Map<string, FileVolume>();
    const chunks = new Map<string, Map<number, number>>();
    for (const v of this.volumes.values()) {
      images.set(v.name, await openStagingImage(dir, v));
      chunks.set(v.name, wipe ? new Map() : await readChunkList(dir, v.name));
    }
    this.staging = { images, chunks };
  }

  private async closeStaging(remove: boolean): Promise<void> {
    if (this.staging) for (const img of this.staging.images.values()) await img.close();
    this.staging = undefined;
    if (remove) await fsp.rm(path.join(this.dataRoot, STAGING_DIR), { recursive: true, force: true });
  }

  /** Make the staged chunks durable (images, then the lists that name them). */
  private async flushStaging(): Promise<void> {
    if (!this.staging) return;
    const dir = path.join(this.dataRoot, STAGING_DIR);
    for (const [name, img] of this.staging.images) {
      await img.flush();
      const list = this.staging.chunks.get(name)!;
      const tmp = path.join(dir, `${name}.chunks.tmp`);
      const fh = await fsp.open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify([...list]));
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, path.join(dir, `${name}.chunks`));
    }
    // The renames durable too: the sync cursor saved after this claims these chunks, and a power
    // cut must not bring back older lists under it (the chunks they miss would never be sent again).
    await syncPath(dir);
  }

  /** A delta sync is being staged: the volumes hold an older consistent point meanwhile. */
  isStaging(): boolean {
    return !!this.state.staged;
  }

  /** The sequence the volumes show (the held point while a delta sync is staged). */
  visibleSeq(): number {
    return this.state.staged ? this.state.staged.heldSeq : this.applied;
  }

  /** Primary time of the point the volumes show. */
  visibleTimeMs(): number {
    return this.state.staged ? this.state.staged.heldTimeMs : this.state.appliedTimeMs;
  }

  /**
   * A promotion while a delta sync is staged: the site must serve one consistent point. A sync
   * that ended with everything through its consistent point stored here is complete, and the
   * newest consistent state this site has: it is committed (as it would have been by the next
   * store(), or at the next start), never thrown away. One still running (or whose journal tail
   * is still missing) is given up: the volumes already hold the consistent point it was staged
   * over, and the stored tail after the sync point is dropped with the staging area.
   * The decision is saved first: a kill after the staging area or the tail went must not restart
   * as a replica still staging that sync (it would commit it later without its chunks); a start
   * that finds the mark finishes the give-up (finishAbandonedStaging), and so does the next call
   * here when a step failed without a crash (meanwhile the site does not receive:
   * stagingAbandonUnfinished).
   * Returns the sequence the volumes hold.
   */
  async settleStagingForPromotion(): Promise<number> {
    await this.idle();
    const st = this.state.staged;
    if (!st) return this.applied;
    if (this.stagedComplete()) {
      await this.commitNow();
      return this.applied;
    }
    st.abandoning = true;
    try {
      await this.save();
    } catch (e) {
      // Nothing was touched yet: still staging, and receiving again is safe.
      st.abandoning = undefined;
      throw e;
    }
    await this.closeStaging(true);
    await this.journal.resetTo(st.heldSeq);
    this.durable = this.applied = st.heldSeq;
    forgetStaged(this.state, st);
    cancelVerifies(this.queue, 'staged sync abandoned');
    this.queue = [];
    await this.save();
    this.logger.warn({ heldSeq: st.heldSeq }, 'staged delta sync abandoned: the volumes stay at their consistent point');
    return st.heldSeq;
  }

  /** A promotion began to give up the staged sync and did not finish (a step failed): its staging area may be gone. */
  stagingAbandonUnfinished(): boolean {
    return !!this.state.staged?.abandoning;
  }

  /** The staged sync ended and the journal holds everything through its consistent point: it can be committed (never one being given up). */
  private stagedComplete(): boolean {
    const st = this.state.staged;
    return !!st && !st.abandoning && st.consistentSeq !== undefined && !this.state.sync && this.durable >= st.consistentSeq;
  }

  private maybeCommit(): void {
    if (!this.stagedComplete() || this.committing) return;
    this.committing = this.commit()
      .catch((e: unknown) => {
        this.logger.error({ err: e }, 'committing the staged delta sync failed; retrying');
        setTimeout(() => this.maybeCommit(), 1000).unref();
      })
      .finally(() => (this.committing = undefined));
  }

  /** Commit the complete staged sync now (a promotion), its failure thrown to the caller rather than retried later. */
  private async commitNow(): Promise<void> {
    const run = this.commit();
    this.committing = run.catch(() => undefined).finally(() => (this.committing = undefined));
    await run;
  }

  /**
   * Move the volumes from the held point to the sync's consistent point in one step under the
   * apply gate: staged chunks, then every stored record after the sync point. Marked in the state
   * file first, so a crash in the middle is redone at start, never served half done.
   */
  private async commit(): Promise<void> {
    const st = this.state.staged!;
    const staging = this.staging!;
    await this.flushStaging();
    st.committing = true;
    await this.save();
    const from = this.applied;
    const to = this.durable;
    let lastTime = 0;
    const total = [...staging.chunks.values()].reduce((n, l) => n + l.size, 0);
    let copied = 0;
    await this.gate.exclusive(async () => {
      for (const [name, list] of staging.chunks) {
        const v = this.volumes.get(name);
        if (!v) continue;
        await copyChunks(list, staging.images.get(name)!, v.image, async (off, len) => {
          await this.testCopies.get(name)?.preserve(off, len);
          // Test hook: die half-way through a commit (proves the redo at start).
          if (COMMIT_FAILPOINT && ++copied === Math.ceil(total / 2)) {
            await v.image.flush();
            process.kill(process.pid, 'SIGKILL');
          }
        });
      }
      for await (const rec of this.journal.records(from, to)) {
        await this.applyRecord(rec);
        this.stats.recordsApplied++;
        this.stats.bytesApplied += rec.lengthBytes;
        lastTime = rec.timeMs;
      }
    });
    for (const v of this.volumes.values()) await v.image.flush();
    this.applied = to;
    this.state.appliedSeq = to;
    const endTime = lastTime || st.consistentTimeMs;
    if (endTime) this.state.appliedTimeMs = endTime;
    cancelVerifies(this.queue.filter((seg) => seg.toSeq <= to), 'staged sync committed over it');
    this.queue = this.queue.filter((seg) => seg.toSeq > to);
    this.state.staged = undefined;
    this.state.consistentSeq = 0;
    await this.save();
    await this.closeStaging(true);
    this.logger.info({ heldSeq: st.heldSeq, appliedSeq: to, chunks: total }, 'staged delta sync committed: the volumes moved from their old consistent point to the new one in one step');
    if (this.queue.length) this.applying ??= this.applyLoop().finally(() => (this.applying = undefined));
  }

  /**
   * Write the state file (the latest state, when saves queue up). One at a time: two saves at
   * once shared the temporary file, and a shorter state written over a longer one left the
   * longer one's tail behind it.
   */
  private save(): Promise<void> {
    const next = this.saving.then(() => this.saveNow());
    this.saving = next.catch(() => undefined);
    return next;
  }

  private async saveNow(): Promise<void> {
    const tmp = `${this.statePath}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(this.state, null, 2) + '\n');
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, this.statePath);
    // The rename itself durable: a power cut must not bring back the old state file under a
    // journal already reset (sync start, divergence) on the strength of the new one.
    await syncPath(path.dirname(this.statePath));
  }

  durableSeq(): number {
    return this.durable;
  }

  appliedSeq(): number {
    return this.applied;
  }

  appliedTimeMs(): number {
    return this.state.appliedTimeMs;
  }

  primarySiteId(): string | undefined {
    return this.state.primarySiteId;
  }

  syncState(): ReplicaSyncState {
    // Staging a delta sync: the volumes still hold their older consistent point.
    if (this.state.staged && this.state.primarySiteId) return 'consistent';
    if (!this.state.primarySiteId || this.state.sync || this.applied < this.state.consistentSeq) return 'syncing';
    return 'consistent';
  }

  counters(): typeof this.stats {
    return { ...this.stats };
  }

  /** Called at the handshake: learn (and create) the primary's volumes. */
  async ensureVolumes(descs: VolumeDescriptor[]): Promise<void> {
    for (const d of descs) {
      const have = this.volumes.get(d.name);
      if (have) {
        if (have.sizeBytes > d.sizeBytes) {
          throw new ReplicationError(ReplicationErrorCode.Handshake, `volume ${d.name} is ${d.sizeBytes} bytes on the primary but ${have.sizeBytes} here: a volume never shrinks (is this the primary it replicates?)`);
        }
        if (have.sizeBytes < d.sizeBytes) {
          // The primary grew it (offsite resize): grown here before any record past the old end
          // can arrive (they come after this handshake), with a staged sync's image alongside.
          const from = have.sizeBytes;
          await have.image.grow(d.sizeBytes);
          const staged = this.staging?.images.get(d.name);
          if (staged && staged.sizeBytes < d.sizeBytes) await staged.grow(d.sizeBytes);
          this.onGrown?.(have);
          this.logger.warn({ volume: d.name, sizeBytes: d.sizeBytes, previousSizeBytes: from }, 'replica volume grown with the primary');
        }
        continue;
      }
      if (this.retired.has(d.name)) {
        // Its copy here went aside (removed or retired); a new empty one would miss every write
        // before this point while the replica says it is consistent.
        throw new ReplicationError(ReplicationErrorCode.Handshake, `the primary serves volume ${d.name}, which was removed at this site (see state/removed-volumes.json and removed/): a new copy here would lack its earlier writes. Remove it on the primary (offsite remove-volume), or start this replica from a fresh data directory`);
      }
      const image = await FileVolume.open({ dir: this.volumesDir, name: d.name, sizeBytes: d.sizeBytes, blockSize: d.blockSize, readOnly: false, create: true });
      await this.journal.registerVolume(d.name);
      const v = new ReplicaVolume(image, this.gate);
      this.volumes.set(d.name, v);
      await this.onVolume(v, true);
      this.logger.info({ volume: d.name, sizeBytes: d.sizeBytes }, 'replica volume created from the primary');
    }
  }

  /**
   * At every handshake: is this replica's data a prefix of the primary's history (its lineage)?
   * If it went past the fork (an old primary demoted after a failover), the writes after the fork
   * are saved aside as a data directory `offsite replay` reads, and an image sync (comparing
   * chunk hashes, so only differing blocks travel) brings the volumes onto the primary's history.
   */
  async acceptPrimary(siteId: string, primaryLineage?: unknown): Promise<void> {
    const theirs = isLineage(primaryLineage) ? primaryLineage : [];
    const ours = await this.lineageFile.load();
    const verdict = compareLineage(ours, this.durable, theirs);
    if (verdict.kind === 'unrelated' && !this.state.fresh) {
      throw new ReplicationError(ReplicationErrorCode.Handshake, `this site's data (generations ${ours.map((g) => g.id).join(', ')}) shares no history with primary ${siteId}; wipe the data directory or seed it`);
    }
    if (verdict.kind === 'diverged') {
      await this.idle();
      // The resync is recorded before the journal goes back to the fork: a crash after the reset
      // (the lineage not saved yet, so the next handshake sees a prefix, no divergence) must still
      // find a resync due, or the split-off writes would stay in the volumes under the new
      // primary's history. A crash before it diverges again at the next handshake and redoes all.
      this.state.sync = { fromSeq: -1, volume: '', offsetBytes: 0, compare: true };
      this.state.fresh = false;
      await this.save();
      const saved = await this.saveSplit(verdict.forkSeq);
      this.logger.warn({ forkSeq: verdict.forkSeq, durableSeq: this.durable, savedTo: saved, primarySiteId: siteId }, 'this site holds writes the new primary never saw (split-off writes): saved aside for offsite replay; resyncing only differing blocks');
      const fork = Math.min(verdict.forkSeq, this.durable);
      await this.journal.resetTo(fork);
      await this.bookmarks?.dropAfter(fork);
      this.durable = this.applied = fork;
    }
    this.state.primarySiteId = siteId;
    if (theirs.length) await this.lineageFile.save(theirs);
    await this.save();
    this.primaryChecked = true;
  }

  /**
   * Copy the volumes and the records after `forkSeq` into `<data>/split-<time>/`, itself an
   * offsite data directory: `offsite replay --data` on it gives the volumes as this site last had
   * them, and `offsite journal inspect` lists the split-off records.
   */
  private async saveSplit(forkSeq: number): Promise<string> {
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const dir = path.join(this.dataRoot, `split-${stamp}`);
    const volDir = path.join(dir, 'volumes');
    await fsp.mkdir(volDir, { recursive: true, mode: 0o700 });
    const identity = { format: DATA_FORMAT, version: DATA_VERSION, siteId: randomUUID(), createdAt: new Date().toISOString(), splitFrom: this.siteId, forkSeq };
    await fsp.writeFile(path.join(dir, 'offsite.json'), JSON.stringify(identity, null, 2) + '\n', { mode: 0o600 });
    const copies = [path.join(dir, 'offsite.json')];
    for (const v of this.volumes.values()) {
      await v.image.flush();
      await fsp.copyFile(path.join(this.volumesDir, `${v.name}.json`), path.join(volDir, `${v.name}.json`));
      await fsp.copyFile(v.image.imagePath, path.join(volDir, `${v.name}.img`));
      copies.push(path.join(volDir, `${v.name}.json`), path.join(volDir, `${v.name}.img`));
    }
    // Durable before anything that depends on them (a promotion at a point then drops the records after it): a power cut keeps them.
    for (const f of [...copies, volDir, dir, this.dataRoot]) await syncPath(f);
    const head = this.journal.headSeq();
    const split = await Journal.open({ dir: path.join(dir, 'journal') });
    try {
      for (const name of this.journal.volumeNames()) await split.registerVolume(name);
      for await (const rec of this.journal.records(forkSeq, head)) await split.appendAt(rec.seq, rec.timeMs, rec.volume, rec.op, rec.offsetBytes, rec.lengthBytes, rec.data).done;
      await split.sync();
      await split.checkpoint(head);
    } finally {
      await split.close();
    }
    return dir;
  }

  async store(records: ReplicatedRecord[], toSeq: number, payloads?: Buffer[], ends?: number[]): Promise<void> {
    if (this.applyError) throw this.applyError;
    // Refused whole or not at all: a batch the journal took in part would leave records past the
    // durable sequence that the primary, resending from there, could never store again.
    let prev = Math.max(this.durable, this.journal.assignedSeq());
    for (const r of records) {
      if (r.seq <= prev || r.seq > toSeq) throw new ReplicationError(ReplicationErrorCode.Sequence, `record ${r.seq} does not follow ${prev} (a batch up to ${toSeq})`);
      if (!this.journal.hasVolume(r.volume)) throw new ReplicationError(ReplicationErrorCode.Sequence, `record ${r.seq} for volume ${r.volume}, unknown here`);
      prev = r.seq;
    }
    // Fewer records than sequence numbers: some segment was coalesced. Its inner points are
    // marked (durably) before its records are stored, so replay never offers one.
    // A store that failed (or a process killed) after marking leaves marks past the durable
    // head: they name records never stored and would shadow the marks of what is sent instead.
    if (this.marksPastDurable) {
      await this.journal.forgetCoalescedAfter(this.durable);
      this.marksPastDurable = false;
    }
    if (records.length !== toSeq - this.durable) {
      this.marksPastDurable = true;
      await this.markCoalesced(records, ends ?? [toSeq]);
    }
    const dones: Promise<void>[] = [];
    for (const r of records) {
      const { done } = this.journal.appendAt(r.seq, r.timeMs, r.volume, r.op, r.offsetBytes, r.lengthBytes, r.data ?? EMPTY);
      dones.push(done);
    }
    try {
      await Promise.all(dones);
      await this.journal.sync();
    } catch (e) {
      await this.cutBackToDurable();
      throw e;
    }
    this.durable = toSeq;
    this.marksPastDurable = false;
    if (this.state.fresh) {
      this.state.fresh = false;
      await this.save();
    }
    if (this.state.staged) {
      // Held in the journal until the staged sync commits (which reads them back from there);
      // a commit already running applies what arrives meanwhile from the queue afterwards.
      if (this.committing) this.queue.push({ records, toSeq, payloads });
      else giveBack(payloads); // read back from the journal by the commit
      return this.maybeCommit();
    }
    this.queue.push({ records, toSeq, payloads });
    this.applying ??= this.applyLoop().finally(() => (this.applying = undefined));
  }

  /**
   * A store that failed part-way (no space for a new segment file...): the records it did append
   * go again, so that the batch the primary sends again from the durable sequence is taken
   * (instead of refused, as not following them, until a restart).
   */
  private async cutBackToDurable(): Promise<void> {
    try {
      const cut = await this.journal.truncateAfter(this.durable);
      if (cut) this.logger.warn({ records: cut, durableSeq: this.durable }, 'replica: a batch stored in part was cut back; the primary sends it again');
    } catch (e) {
      this.logger.error({ err: e, durableSeq: this.durable, journalHead: this.journal.headSeq() }, 'replica: a batch stored in part could not be cut back; records from the primary are refused until a restart');
    }
  }

  /** Each coalesced segment among `records` (ending at `ends`): its points from the first missing record on are no state the primary had. */
  private async markCoalesced(records: ReplicatedRecord[], ends: number[]): Promise<void> {
    let i = 0;
    let next = this.durable + 1;
    for (const end of ends) {
      let firstMissing: number | undefined;
      for (; i < records.length && records[i].seq <= end; i++) {
        if (firstMissing === undefined && records[i].seq !== next) firstMissing = next;
        next = records[i].seq + 1;
      }
      if (firstMissing === undefined && next <= end) firstMissing = next;
      if (firstMissing !== undefined) await this.journal.markCoalesced(firstMissing, end);
      next = end + 1;
    }
  }

  /**
   * ReceiverSink.storeBookmarks: the primary's bookmarks, kept durably. The primary's word wins
   * over a bookmark of the same name kept here before (from another history).
   */
  async storeBookmarks(list: BookmarkDescriptor[]): Promise<number> {
    const marks = this.bookmarks;
    if (!marks) return 0;
    let top = 0;
    for (const b of list) {
      top = Math.max(top, b.id);
      if (!isBookmark(b)) {
        this.logger.warn({ bookmark: (b as BookmarkDescriptor).name }, 'a bookmark from the primary with a name this site does not take: skipped');
        continue;
      }
      const had = marks.get(b.name);
      if (had?.seq === b.seq) continue;
      if (had) await marks.dropNamed(b.name);
      await marks.add(b);
      this.logger.info({ bookmark: b.name, seq: b.seq, time: new Date(b.timeMs).toISOString() }, 'bookmark from the primary kept');
    }
    return top;
  }

  /** The primary's removed volumes (Hello): kept, so that a copy is retired even if the link drops first. */
  async primaryRemovedVolumes(removed: RemovedByPrimary[], primaryOldestSeq?: number): Promise<void> {
    // A volume added and removed between two handshakes: this replica never had it, and its
    // records are still to come. It is created to take them, then retired like the others.
    const missing = removed.filter((r) => !this.volumes.has(r.name) && !this.retired.has(r.name) && r.lastSeq > this.durable && r.sizeBytes);
    if (missing.length) await this.ensureVolumes(missing.map((r) => ({ name: r.name, sizeBytes: r.sizeBytes!, blockSize: r.blockSize ?? 512, uuid: '' })));
    const had = this.state.primaryRemoved ?? [];
    // Writes of it this replica lacks that the primary no longer holds as records (folded by its
    // journal cap): the delta sync covers only the volumes the primary serves, so this copy ends
    // without them. It is still retired, said to be incomplete.
    const list = removed.map((r) => ({
      name: r.name,
      lastSeq: r.lastSeq,
      incomplete: had.find((h) => h.name === r.name)?.incomplete || (r.lastSeq > this.durable && primaryOldestSeq !== undefined && primaryOldestSeq > this.durable + 1) || undefined,
    }));
    if (had.length === list.length && had.every((r, i) => r.name === list[i].name && r.lastSeq === list[i].lastSeq && r.incomplete === list[i].incomplete)) return;
    this.state.primaryRemoved = list;
    await this.save();
  }

  primaryRemoved(): readonly (RemovedByPrimary & { incomplete?: boolean })[] {
    return this.state.primaryRemoved ?? [];
  }

  /** A promotion: the removals a primary told of no longer apply (this site decides its volumes now). */
  async forgetPrimaryRemovals(): Promise<void> {
    if (!this.state.primaryRemoved?.length) return;
    this.state.primaryRemoved = undefined;
    await this.save();
  }

  /** Forget a volume whose copy is retired (the caller holds the apply gate and closes its image). */
  retire(name: string): void {
    this.volumes.delete(name);
    this.retired.add(name);
  }

  /** The records to apply: a record for a retired copy is dropped (none should come: the primary removed the volume after them). */
  private applicable(records: readonly JournalRecord[]): readonly JournalRecord[] {
    if (!this.retired.size || records.every((r) => !this.retired.has(r.volume))) return records;
    this.logger.warn({ volumes: [...new Set(records.filter((r) => this.retired.has(r.volume)).map((r) => r.volume))] }, 'records for a volume whose copy is retired here: skipped');
    return records.filter((r) => !this.retired.has(r.volume));
  }

  private imageOf(r: JournalRecord): FileVolume {
    const v = this.volumes.get(r.volume);
    if (!v) throw new ReplicationError(ReplicationErrorCode.Sequence, `record ${r.seq} for unknown volume ${r.volume}`);
    return v.image;
  }

  /** A running test copy of the record's volume keeps its view of the range first. */
  private async preserve(r: JournalRecord): Promise<void> {
    await this.testCopies.get(r.volume)?.preserve(r.offsetBytes, r.lengthBytes);
  }

  /** One record onto its volume (a running test copy keeps its view first). Callers hold the apply gate. */
  private async applyRecord(r: JournalRecord): Promise<void> {
    if (this.retired.has(r.volume)) return;
    const image = this.imageOf(r);
    await this.preserve(r);
    await applyToVolume(image, r);
  }

  /**
   * Online verify (ReceiverSink.verify): queued behind every segment stored so far, so the range
   * is read once they are applied and before any later one is.
   */
  verify(volume: string, offsetBytes: number, lengthBytes: number, hashes: Buffer, data?: Buffer): Promise<VerifyAnswer> {
    if (this.applyError) return Promise.resolve({ notReady: `applying failed: ${this.applyError.message}` });
    if (this.state.staged || this.syncState() !== 'consistent') return Promise.resolve({ notReady: 'the replica is syncing' });
    if (!this.volumes.has(volume)) return Promise.resolve({ notReady: `no volume ${volume} here` });
    return new Promise((answer) => {
      this.queue.push({ records: [], toSeq: this.durable, verify: { volume, offsetBytes, lengthBytes, hashes, answer, data } });
      this.applying ??= this.applyLoop().finally(() => (this.applying = undefined));
    });
  }

  /** verify --repair: the primary's data for a range, written at the same point of the stream as verify() compares. */
  repair(volume: string, offsetBytes: number, data: Buffer): Promise<VerifyAnswer> {
    return this.verify(volume, offsetBytes, data.length, EMPTY, data);
  }

  /** Write (or, without data, zero) a range of a volume outside the journal, between readers, keeping a test copy's view. */
  private async overwrite(v: ReplicaVolume, offsetBytes: number, lengthBytes: number, data: Buffer | undefined): Promise<void> {
    await this.gate.exclusive(async () => {
      await this.testCopies.get(v.name)?.preserve(offsetBytes, lengthBytes);
      if (data) await v.image.write(offsetBytes, data);
      else await v.image.unmap(offsetBytes, lengthBytes);
    });
  }

  private async writeRepair(c: NonNullable<Pending['verify']>): Promise<void> {
    const v = this.volumes.get(c.volume)!;
    await this.overwrite(v, c.offsetBytes, c.lengthBytes, c.data);
    await v.image.flush();
    this.stats.repairedBytes += c.lengthBytes;
    this.logger.warn({ volume: c.volume, offsetBytes: c.offsetBytes, lengthBytes: c.lengthBytes, appliedSeq: this.applied }, 'verify: range repaired with the primary\'s data');
  }

  private async compare(c: NonNullable<Pending['verify']>): Promise<number[]> {
    const v = this.volumes.get(c.volume)!;
    const data = await this.gate.read(() => v.image.read(c.offsetBytes, c.lengthBytes));
    const ours = verifyHashes(data);
    const mismatched: number[] = [];
    for (let i = 0; i * 8 < ours.length; i++) if (ours.compare(c.hashes, i * 8, i * 8 + 8, i * 8, i * 8 + 8) !== 0) mismatched.push(i);
    this.stats.verifiedBytes += c.lengthBytes;
    if (mismatched.length) {
      this.stats.verifyMismatches += mismatched.length;
      this.logger.warn({ volume: c.volume, offsets: mismatched.map((i) => c.offsetBytes + i * SYNC_CHUNK_BYTES), chunkBytes: SYNC_CHUNK_BYTES, appliedSeq: this.applied }, 'verify: chunks differ from the primary');
    }
    return mismatched;
  }

  private async applyLoop(): Promise<void> {
    while (this.queue.length) {
      const seg = this.queue[0];
      if (seg.verify) {
        const c = seg.verify;
        if (c.data) {
          await this.writeRepair(c).then(
            () => c.answer({ repaired: true }),
            (e: Error) => c.answer({ notReady: `writing the volume failed: ${e.message}` }),
          );
        } else {
          await this.compare(c).then(
            (mismatched) => c.answer({ mismatched }),
            (e: Error) => c.answer({ notReady: `reading the volume failed: ${e.message}` }),
          );
        }
        this.queue.shift();
        continue;
      }
      try {
        await this.gate.exclusive(async () => {
          await applyInOrder(this.applicable(seg.records as JournalRecord[]), (r) => this.imageOf(r), this.testCopies.size ? (r) => this.preserve(r) : undefined);
          // Under the gate: whoever holds it next (a test copy made at a point) reads the
          // applied point the images hold.
          this.applied = seg.toSeq;
          const last = seg.records[seg.records.length - 1];
          if (last) this.state.appliedTimeMs = last.timeMs;
        });
      } catch (e) {
        if ((e as { code?: string }).code === 'VOLUME_NO_SPACE' || (e as NodeJS.ErrnoException).code === 'ENOSPC') {
          // The replica pauses (the records are safe in its journal) and retries when space returns.
          this.logger.error({ seq: seg.toSeq }, 'replica volume file system full: applying paused, retrying');
          await new Promise((r) => setTimeout(r, 1000));
          continue;
        }
        this.applyError = e as Error;
        this.logger.error({ err: e, seq: seg.toSeq }, 'replica apply failed; replication stops until restart');
        return;
      }
      this.queue.shift();
      // Applied and in the journal: nothing holds the records' data any more. (A segment dropped
      // from the queue unapplied, or whose apply failed, is left to the garbage collector.)
      giveBack(seg.payloads);
      for (const r of seg.records) {
        this.stats.recordsApplied++;
        this.stats.bytesApplied += r.lengthBytes;
      }
      this.stats.segmentsApplied++;
      this.state.appliedSeq = this.applied;
      if (this.state.consistentSeq && this.applied >= this.state.consistentSeq && !this.state.sync) {
        this.logger.info({ appliedSeq: this.applied }, 'replica consistent');
        this.state.consistentSeq = 0;
        await this.save();
      }
    }
  }

  /** Wait until everything stored is applied. */
  async idle(): Promise<void> {
    while (this.applying || this.committing) await (this.applying ?? this.committing);
  }

  /** Persist the consistent point (called by the keeper after images are flushed). */
  async persist(): Promise<void> {
    await this.save();
  }

  // --- image sync -------------------------------------------------------------------------

  isFresh(): boolean {
    return this.state.fresh;
  }

  cursor(): SyncCursor | undefined {
    return this.state.sync;
  }

  async begin(fromSeq: number, volumes: string[]): Promise<void> {
    await this.idle();
    // A replica that holds a consistent point (or already stages over one) stages the sync whole.
    const stage = !this.state.fresh && (!!this.state.staged || this.syncState() === 'consistent');
    if (stage) {
      this.state.staged = { heldSeq: this.state.staged?.heldSeq ?? this.applied, heldTimeMs: this.state.staged?.heldTimeMs ?? this.state.appliedTimeMs };
      await this.openStaging(true);
      cancelVerifies(this.queue, 'sync started');
      this.queue = [];
    }
    // Recorded before the journal is reset: a crash between the two must restart as syncing (the
    // volumes do not hold the point the reset claims), never as consistent at `fromSeq`; a start
    // that finds the reset pending redoes it (finishSyncStart).
    this.state.sync = { fromSeq, volume: volumes[0] ?? '', offsetBytes: 0, compare: !this.state.fresh };
    this.state.consistentSeq = fromSeq;
    this.state.syncResetPending = fromSeq;
    await this.save();
    await this.resetForSync(fromSeq);
    this.logger.info({ fromSeq, fresh: this.state.fresh, stagedOver: this.state.staged?.heldSeq }, stage ? 'sync start: staged whole, the volumes keep their consistent point until it is complete' : 'sync start');
  }

  /** The journal back to a sync's starting point (its records come from the sync), then the pending mark cleared. */
  private async resetForSync(fromSeq: number): Promise<void> {
    await this.journal.resetTo(fromSeq);
    this.durable = this.applied = fromSeq;
    this.state.appliedSeq = fromSeq;
    this.state.syncResetPending = undefined;
    this.rebaseNeeded = true;
    await this.save();
  }

  async hashes(volume: string, fromOffset: number): Promise<Buffer> {
    const v = this.volumes.get(volume);
    if (!v) return Buffer.alloc(0);
    const n = Math.ceil((v.sizeBytes - fromOffset) / SYNC_CHUNK_BYTES);
    const out = Buffer.allocUnsafe(n * 8);
    for (let i = 0; i < n; i++) {
      const off = fromOffset + i * SYNC_CHUNK_BYTES;
      const len = Math.min(SYNC_CHUNK_BYTES, v.sizeBytes - off);
      chunkHash(await v.image.read(off, len)).copy(out, i * 8);
    }
    return out;
  }

  async chunk(volume: string, offsetBytes: number, lengthBytes: number, data: Buffer | undefined): Promise<void> {
    const v = this.volumes.get(volume);
    if (!v || !this.state.sync) throw new ReplicationError(ReplicationErrorCode.Sequence, `sync chunk for ${volume} outside a sync`);
    if (this.staging) {
      let img = this.staging.images.get(volume);
      if (!img) {
        // A volume the primary added since the staging began.
        img = await openStagingImage(path.join(this.dataRoot, STAGING_DIR), v);
        this.staging.images.set(volume, img);
        this.staging.chunks.set(volume, new Map());
      }
      if (data) await img.write(offsetBytes, data);
      else await img.unmap(offsetBytes, lengthBytes);
      this.staging.chunks.get(volume)!.set(offsetBytes, lengthBytes);
    } else {
      await this.overwrite(v, offsetBytes, lengthBytes, data);
      if (this.state.fresh) this.state.fresh = false;
    }
    this.stats.syncChunks++;
    this.stats.syncBytes += lengthBytes;
    this.syncBytesSinceSave += lengthBytes;
    if (this.syncBytesSinceSave >= 4 << 20) {
      this.syncBytesSinceSave = 0;
      if (this.staging) await this.flushStaging();
      else await v.image.flush();
      this.state.sync = { ...this.state.sync, volume, offsetBytes: offsetBytes + lengthBytes };
      await this.save();
    }
  }

  async end(fromSeq: number, consistentSeq: number, consistentTimeMs?: number): Promise<void> {
    if (this.state.staged) {
      await this.flushStaging();
      this.state.sync = undefined;
      this.state.staged.consistentSeq = consistentSeq;
      this.state.staged.consistentTimeMs = consistentTimeMs;
      await this.save();
      this.logger.info({ fromSeq, consistentSeq, heldSeq: this.state.staged.heldSeq, chunks: this.stats.syncChunks, bytes: this.stats.syncBytes }, 'sync end: staged; committed in one step once the journal tail through the consistent point is stored');
      this.maybeCommit();
      return;
    }
    for (const v of this.volumes.values()) await v.image.flush();
    this.state.sync = undefined;
    this.state.consistentSeq = consistentSeq > this.applied ? consistentSeq : 0;
    // Consistent already (no journal tail to apply): its time is the primary's, not that of whatever the volumes held before.
    if (!this.state.consistentSeq && consistentTimeMs) this.state.appliedTimeMs = consistentTimeMs;
    await this.save();
    this.logger.info({ fromSeq, consistentSeq, chunks: this.stats.syncChunks, bytes: this.stats.syncBytes }, 'sync end: replica consistent once the journal tail is applied');
  }

  /** Copy the images as the point-in-time base (after a sync, once consistent). */
  async rebaseHistory(): Promise<void> {
    await this.idle();
    const seq = this.applied;
    await this.gate.exclusive(() =>
      this.journal.rebase(seq, this.state.appliedTimeMs || Date.now(), async (baseDir) => {
        await fsp.mkdir(baseDir, { recursive: true });
        for (const v of this.volumes.values()) {
          await v.image.flush();
          const t = await ImageFileTarget.open(path.join(baseDir, `${v.name}.img`), v.sizeBytes, true);
          await t.close();
          await fsp.copyFile(v.image.imagePath, path.join(baseDir, `${v.name}.img`));
        }
      }),
    );
  }
}

const EMPTY = Buffer.alloc(0);

/** A staging image as large as its volume: created, or reopened (and grown if the volume grew since). */
async function openStagingImage(dir: string, v: { name: string; sizeBytes: number; blockSize: number }): Promise<FileVolume> {
  const exists = (await FileVolume.list(dir)).includes(v.name);
  const img = await FileVolume.open({ dir, name: v.name, sizeBytes: exists ? undefined : v.sizeBytes, blockSize: v.blockSize, readOnly: false, create: true });
  if (img.sizeBytes < v.sizeBytes) await img.grow(v.sizeBytes);
  return img;
}

/** Copy the listed chunks from a staging image into a volume image (`before` runs ahead of each). */
async function copyChunks(list: Map<number, number>, from: FileVolume, to: FileVolume, before?: (off: number, len: number) => Promise<void>): Promise<void> {
  for (const [off, len] of list) {
    await before?.(off, len);
    await to.write(off, await from.read(off, len));
  }
}

/** The chunks staged for one volume (offset → length), as last made durable. */
async function readChunkList(dir: string, name: string): Promise<Map<number, number>> {
  try {
    const list = JSON.parse(await fsp.readFile(path.join(dir, `${name}.chunks`), 'utf8')) as [number, number][];
    return new Map(list);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw e;
  }
}

function giveBack(payloads: Buffer[] | undefined): void {
  if (payloads) for (const p of payloads) releaseBuffer(p);
}
