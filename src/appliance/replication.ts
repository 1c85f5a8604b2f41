/**
 * The primary's side of replication, wired to this site: the journal as the shipper's source,
 * the images for syncs, and the RPO controller closing the loop (coalesce, throttle, alert).
 */
import type { Logger } from '../common/logger';
import { monoOfWall, wallOfMono } from '../common/clock';
import type { Journal } from '../journal/wal';
import type { BookmarkDescriptor, RemovedVolumeDescriptor, ReplicatedRecord, ShipperSource, SyncSource, VerifyProbe, VolumeDescriptor } from '../replication/ports';
import type { Bookmarks } from '../journal/bookmarks';
import type { SettingSource } from './runtime-setting';
import { verifyHashes } from '../replication/protocol';
import { Verifier, type VerifyRange, type VerifySource, type VerifyStatus } from '../replication/verify';
import { RpoController, type RpoDecision, type RpoPolicy } from '../replication/rpo';
import { Shipper, type ShipperStats } from '../replication/shipper';
import type { LinkKey } from '../replication/link-security';
import type { FileVolume } from '../volume/file-volume';
import type { ImageTracker } from '../volume/journaled';

export interface PrimaryReplicationOptions {
  siteId: string;
  journal: Journal;
  tracker: ImageTracker;
  images: () => ReadonlyMap<string, FileVolume>;
  host: string;
  port: number;
  maxBandwidthBytesPerSec: number;
  /** Where the starting cap comes from; the configured cap (when a run-time change overrides it). */
  bandwidthSource?: SettingSource;
  configuredBandwidthBytesPerSec?: number;
  rpoTargetMs: number;
  rpoPolicy: RpoPolicy;
  /** Where the starting target and policy come from; the configured ones (when a run-time change overrides them). */
  rpoSource?: SettingSource;
  configuredRpo?: { targetMs: number; policy: RpoPolicy };
  logger: Logger;
  lineage: () => unknown;
  /** See ShipperSource.forkHistory. */
  forkHistory?: () => Promise<void>;
  /** Named points (offsite bookmark) to ship to the replica. */
  bookmarks?: Bookmarks;
  /** The volumes removed from this primary (offsite remove-volume), told to the replica at each handshake. */
  removedVolumes?: () => RemovedVolumeDescriptor[];
  linkKey?: LinkKey;
  /** Online verify on a schedule: every this long (0: only when asked), reading at most this fast (0: no cap). */
  verifyEveryMs?: number;
  verifyRateBytesPerSec?: number;
  /** Keeps each verify run's result (and gives back the last one at start). */
  verifyResult?: { load(): Promise<VerifyStatus | undefined>; save(s: VerifyStatus): Promise<void> };
  /** Start with shipping paused (an operator's offsite pause, kept across restarts). */
  paused?: ReplicationPause;
  /**
   * A repair run is due (the site stopped uncleanly since the last one finished): started once
   * the replica is connected and not syncing; `done` once a run over them has ended. `ranges`:
   * where the images may differ (the write-intent maps); every volume when undefined.
   */
  repairDue?: { since: string; ranges?: VerifyRange[]; done(): Promise<void> };
  /**
   * The time of the oldest write the replica lacks, kept across restarts while records it never
   * got are folded away (no retained record carries their time): `at` as saved at the last run,
   * `save` keeps a new value (undefined: nothing folded is missing any more).
   */
  missingSince?: { at?: number; save(ms: number | undefined): Promise<void> };
}

/** Shipping paused by the operator (offsite pause): since when, and why (their words). */
export interface ReplicationPause {
  pausedAt: string;
  reason: string;
}

export interface PrimaryReplicationStatus {
  ackedSeq: number;
  rpoSeconds: number;
  backlogBytes: number;
  /** replicating (caught up or draining), syncing (image sync running), disconnected. */
  consistency: 'replicating' | 'syncing' | 'disconnected';
  replicaConsistent: boolean;
  link: {
    connected: boolean;
    replica: string;
    replicaSiteId: string;
    bytesRaw: number;
    bytesWire: number;
    rttMs: number;
    connects: number;
    disconnects: number;
    maxBandwidthBytesPerSec: number;
    /** configured (flag, file, environment) or runtime (offsite bandwidth, kept across restarts). */
    maxBandwidthSource: SettingSource;
    configuredMaxBandwidthBytesPerSec: number;
    lastError: string;
  };
  rpo: {
    targetSeconds: number;
    policy: RpoPolicy;
    /** configured (flag, file, environment) or runtime (offsite rpo, kept across restarts). */
    source: SettingSource;
    configuredTargetSeconds: number;
    configuredPolicy: RpoPolicy;
    projectedSeconds: number;
    drainBytesPerSec: number;
    coalescing: boolean;
    coalescedBytesSaved: number;
    throttleDelayMs: number;
    targetMissed: boolean;
  };
  sync: {
    running: boolean;
    started: number;
    resumed: number;
    completed: number;
    remainingBytes: number;
    totalBytes: number;
    chunksSent: number;
    chunksSkipped: number;
  };
  replicaAppliedSeq: number;
  /** Shipping paused by the operator (offsite pause; the link stays up, the journal keeps every write), or null. */
  paused: ReplicationPause | null;
  /**
   * The repair after an unclean stop, while it is due (waiting for the replica, or running), or
   * null: since when, and the bytes it compares (`ranges` of them; every volume when null).
   */
  repairDue: { since: string; running: boolean; ranges: number | null; bytes: number | null } | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class JournalSource implements ShipperSource, VerifySource {
  readonly sync: SyncSource;
  constructor(
    readonly siteId: string,
    private readonly journal: Journal,
    private readonly tracker: ImageTracker,
    private readonly images: () => ReadonlyMap<string, FileVolume>,
    readonly lineage: () => unknown,
    private readonly marks?: Bookmarks,
    readonly removedVolumes?: () => RemovedVolumeDescriptor[],
    readonly forkHistory?: () => Promise<void>,
  ) {
    this.sync = {
      imageSeq: () => this.tracker.safeSeq(this.journal.headSeq()),
      readImage: (v, o, l) => this.image(v).read(o, l),
      allocated: (v, o, l) => this.image(v).allocation(o, l),
    };
  }

  private image(name: string): FileVolume {
    const img = this.images().get(name);
    if (!img) throw new Error(`no volume ${name}`);
    return img;
  }

  volumes(): VolumeDescriptor[] {
    return [...this.images().values()].map((v) => ({ name: v.name, sizeBytes: v.sizeBytes, blockSize: v.blockSize, uuid: v.uuid.toString('hex') }));
  }

  headSeq(): number {
    return this.journal.headSeq();
  }

  oldestSeq(): number {
    return this.journal.oldestSeq();
  }

  readAfter(afterSeq: number, maxBytes: number, into?: Buffer, maxRecords?: number): Promise<ReplicatedRecord[]> {
    return this.journal.readAfter(afterSeq, maxBytes, undefined, into, maxRecords);
  }

  waitForAppend(afterSeq: number): Promise<void> {
    return this.journal.waitForAppend(afterSeq);
  }

  bytesAfter(afterSeq: number): number {
    return this.journal.bytesAfter(afterSeq);
  }

  timeOf(seq: number): number | undefined {
    return this.journal.timeOf(seq);
  }

  writtenAgoMs(seq: number): number | undefined {
    const mono = this.journal.monoOf(seq);
    return mono === undefined ? undefined : performance.now() - mono;
  }

  shipped(seq: number): void {
    this.journal.shipped(seq);
  }

  bookmarksAfter(afterId: number): BookmarkDescriptor[] {
    return this.marks?.after(afterId) ?? [];
  }

  nextBookmarkAfter(seq: number): number | undefined {
    return this.marks?.nextAfter(seq);
  }

  replicaAcked(seq: number): void {
    this.journal.replicaAcked(seq);
  }

  /**
   * Online verify: a range's chunk hashes (or its data, for a repair) as of the last record appended before the read began.
   * The range is watched from before that point, every earlier record is waited into the image,
   * and the read is thrown away if any later record touched the range while it ran.
   */
  async probe(volume: string, offsetBytes: number, lengthBytes: number, withData = false): Promise<(VerifyProbe & { release(): void }) | undefined> {
    const image = this.image(volume);
    const w = this.journal.watch(volume, offsetBytes, lengthBytes);
    const release = () => this.journal.unwatch(w);
    try {
      const seq = this.journal.assignedSeq();
      for (const until = performance.now() + 10_000; this.tracker.safeSeq(this.journal.assignedSeq()) < seq; ) {
        if (performance.now() > until || w.dirtySeq !== Infinity) return release(), undefined;
        await sleep(2);
      }
      const data = await image.read(offsetBytes, lengthBytes);
      if (w.dirtySeq !== Infinity) return release(), undefined;
      if (withData) return { volume, offsetBytes, lengthBytes, seq, hashes: Buffer.alloc(0), data, dirtySeq: () => w.dirtySeq, release };
      return { volume, offsetBytes, lengthBytes, seq, hashes: verifyHashes(data), dirtySeq: () => w.dirtySeq, release };
    } catch (e) {
      release();
      throw e;
    }
  }
}

export class PrimaryReplication {
  readonly shipper: Shipper;
  readonly controller: RpoController;
  readonly verifier: Verifier;
  private readonly source: JournalSource;
  private timer?: NodeJS.Timeout;
  private lastBacklog = 0;
  private lastAppended = 0;
  /** The verifier's run is the repair run after an unclean stop (checkRepairDue). */
  private repairRunning = false;
  /** Whether the link was up and a sync ran at the previous observation (a change starts a new baseline). */
  private lastShape = { syncing: false, connected: false };
  /**
   * When the oldest write the replica lacked at the last look was made (see backlog), on the
   * monotonic clock (performance.now()), as every time the RPO is measured with: a wall clock set
   * back or forward moves no RPO.
   */
  private oldestMissingMono?: number;
  /** The same, as an image sync began: the replica lacks it until the sync ends. */
  private syncMissingSinceMono?: number;
  /** What opts.missingSince holds (or is being given; on the monotonic clock), and the save under way. */
  private savedMissingMono?: number;
  private savingMissing: Promise<void> = Promise.resolve();
  private missed = false;
  private coalescingLogged = false;
  /** The schedule counts from here until a run over every volume has started. */
  private readonly scheduleFrom = Date.now();
  private scheduleRefusal = '';
  private bandwidthSource: SettingSource;
  private rpoSource: SettingSource;
  private pausedBy: ReplicationPause | null;

  constructor(private readonly opts: PrimaryReplicationOptions) {
    const since = opts.missingSince?.at;
    this.oldestMissingMono = this.savedMissingMono = since === undefined ? undefined : monoOfWall(since);
    this.bandwidthSource = opts.bandwidthSource ?? 'configured';
    this.rpoSource = opts.rpoSource ?? 'configured';
    this.pausedBy = opts.paused ?? null;
    this.source = new JournalSource(opts.siteId, opts.journal, opts.tracker, opts.images, opts.lineage, opts.bookmarks, opts.removedVolumes, opts.forkHistory);
    this.controller = new RpoController(opts.rpoTargetMs / 1000, opts.rpoPolicy, opts.maxBandwidthBytesPerSec);
    this.shipper = new Shipper({
      source: this.source,
      host: opts.host,
      port: opts.port,
      logger: opts.logger,
      maxBandwidthBytesPerSec: opts.maxBandwidthBytesPerSec,
      coalesce: () => this.controller.current.coalesce,
      linkKey: opts.linkKey,
    });
    if (this.pausedBy) this.shipper.setPaused(true);
    const shipper = this.shipper;
    this.verifier = new Verifier(this.source, { verify: (p) => shipper.verify(p), connected: () => {
        const st = shipper.stats();
        return st.connected && !st.syncing && !shipper.paused;
      }, cancel: () => shipper.dropProbes() }, opts.logger.child({ task: 'verify' }), opts.verifyResult?.save);
  }

  start(): void {
    this.shipper.start();
    this.lastAppended = this.opts.journal.appendedBytesTotal();
    this.timer = setInterval(() => this.tick(), 250);
    this.timer.unref();
  }

  /** The last verify run's result, from before a restart (shown until the next run). */
  async restoreVerifyResult(): Promise<void> {
    try {
      const s = await this.opts.verifyResult?.load();
      if (s && typeof s === 'object' && typeof s.state === 'string') this.verifier.restore(s);
    } catch (e) {
      this.opts.logger.warn({ err: e }, 'verify: the last result is unreadable; ignored');
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.verifier.stop();
    await this.shipper.stop();
  }

  /** How long ago the replica certainly last heard from this site (see Shipper.sinceConfirmedMs). */
  sinceReplicaConfirmedMs(): number {
    return this.shipper.sinceConfirmedMs();
  }

  /** The delay the throttle adds to each write acknowledgement now (ms). */
  ackDelayMs(): number {
    return this.controller.current.throttleDelayMs;
  }

  /** A volume grew or was added: the replica learns the volumes in a new handshake (grown or created before any record for the new blocks). */
  volumesChanged(reason: string): void {
    this.shipper.reconnect(reason);
  }

  get paused(): ReplicationPause | null {
    return this.pausedBy;
  }

  /** A bookmark was taken: the replica hears of it right away. */
  bookmarked(): void {
    this.shipper.bookmarked();
  }

  /**
   * Stop shipping (offsite pause): the link stays up, writes go on and the journal keeps them
   * (its cap folds the oldest, as when the link is down); a running online verify stops, as the
   * replica stops moving. Already paused: the pause in place, unchanged.
   */
  async pause(p: ReplicationPause): Promise<ReplicationPause> {
    if (this.pausedBy) return this.pausedBy;
    this.pausedBy = { ...p };
    // The run stops first (as it would for a role switch), so it ends "stopped", not failed on probes the pause refused.
    if (this.verifier.running) await this.verifier.stop();
    if (this.pausedBy) this.shipper.setPaused(true);
    return p;
  }

  /** Ship again from where it stopped (offsite resume). Returns the pause it ended, if any. */
  resume(): ReplicationPause | null {
    const was = this.pausedBy;
    this.pausedBy = null;
    this.shipper.setPaused(false);
    return was;
  }

  /** A new RPO target (ms, 0: none) and policy, in force from the next evaluation (a quarter second). */
  setRpo(targetMs: number, policy: RpoPolicy, source: SettingSource = 'runtime'): void {
    this.controller.targetSeconds = targetMs / 1000;
    this.controller.policy = policy;
    this.rpoSource = source;
  }

  setBandwidth(bytesPerSec: number, source: SettingSource = 'runtime'): void {
    this.shipper.setBandwidth(bytesPerSec);
    this.controller.linkHintBytesPerSec = bytesPerSec;
    this.bandwidthSource = source;
  }

  /**
   * What the replica lacks: the bytes still to send, and the time of the oldest write it does not
   * hold. While an image sync runs the shipper's acknowledged point is already the sync's, which
   * the replica reaches only when the copy ends: the oldest write it lacks stays the one it lacked
   * as the sync began. Records folded before they were shipped leave no time behind: the one last
   * seen stands for them (it is no newer than theirs).
   */
  private backlog(): { acked: number; backlogBytes: number; oldestUnackedMono?: number; syncing: boolean; connected: boolean } {
    const j = this.opts.journal;
    const s = this.shipper.stats();
    const acked = s.ackedSeq;
    const head = j.headSeq();
    if (s.syncing) this.syncMissingSinceMono ??= this.oldestMissingMono ?? j.oldestMonoMs() ?? performance.now();
    // Until the replica has everything through the point the sync ended at (a sync cut short
    // and resumed has not ended), it is not consistent at any newer point.
    if (this.syncMissingSinceMono !== undefined && (s.syncing || s.syncConsistentSeq === 0 || acked < s.syncConsistentSeq)) {
      return { acked, backlogBytes: j.bytesAfter(acked) + (s.syncing ? s.syncRemainingBytes : 0), oldestUnackedMono: this.syncMissingSinceMono, syncing: s.syncing, connected: s.connected };
    }
    const afterSync = this.syncMissingSinceMono;
    this.syncMissingSinceMono = undefined;
    if (head <= acked) {
      this.oldestMissingMono = undefined;
      this.keepMissingSince(undefined);
      return { acked, backlogBytes: 0, syncing: false, connected: s.connected };
    }
    const backlogBytes = j.bytesAfter(acked);
    let t: number | undefined;
    const folded = acked + 1 < j.oldestSeq();
    if (!folded) t = j.monoOfFirstAfter(acked);
    else t = Math.min(afterSync ?? Infinity, this.oldestMissingMono ?? Infinity, j.oldestMonoMs() ?? performance.now());
    this.oldestMissingMono = t ?? performance.now();
    // Folded records leave their time nowhere else: kept, so that a restart goes on counting from it.
    this.keepMissingSince(folded ? this.oldestMissingMono : undefined);
    return { acked, backlogBytes, oldestUnackedMono: this.oldestMissingMono, syncing: false, connected: s.connected };
  }

  /**
   * Give opts.missingSince a new value (one save at a time; a failed one is tried again at the
   * next look). Saved as a wall-clock time (by the clocks' offset when saved): a restart reads it
   * back onto its own monotonic clock.
   */
  private keepMissingSince(mono: number | undefined): void {
    const keeper = this.opts.missingSince;
    if (!keeper || mono === this.savedMissingMono) return;
    const before = this.savedMissingMono;
    this.savedMissingMono = mono;
    const wall = mono === undefined ? undefined : wallOfMono(mono);
    this.savingMissing = this.savingMissing.then(() => keeper.save(wall)).catch((e: unknown) => {
      if (this.savedMissingMono === mono) this.savedMissingMono = before;
      this.opts.logger.warn({ err: e }, 'could not keep the time of the oldest folded write the replica lacks; the RPO after a restart may count from a later one');
    });
  }

  /** When the next scheduled verify is due (ms since the epoch), if there is a schedule. */
  nextVerifyAt(): number | undefined {
    const every = this.opts.verifyEveryMs ?? 0;
    if (!every) return undefined;
    // From the last run over every volume (one over fewer, an operator's --volume, does not count).
    const last = this.verifier.status().lastFullRunStartedAt;
    const lastStart = last ? Date.parse(last) : NaN;
    // Overdue (the site was down when it fell due): as soon as the replica is there.
    return (Number.isFinite(lastStart) ? lastStart : this.scheduleFrom) + every;
  }

  /** /status verify: the running or last run, and the schedule. */
  verifyStatus(): VerifyStatus & { scheduleEverySeconds: number; nextScheduledAt?: string } {
    const next = this.nextVerifyAt();
    return { ...this.verifier.status(), scheduleEverySeconds: (this.opts.verifyEveryMs ?? 0) / 1000, nextScheduledAt: next === undefined ? undefined : new Date(next).toISOString() };
  }

  /**
   * After an unclean stop of this primary the images may hold a write whose record the journal
   * lost (the two reach the disk independently): the replica never gets it, and would differ
   * there until the block is written again, later writes built on it. A repair run compares the
   * regions that were being written (every volume when the maps could not say) with the replica
   * and sends what differs. It waits for any other run to end.
   */
  private checkRepairDue(): boolean {
    const due = this.opts.repairDue;
    if (!due) return false;
    if (this.repairRunning) {
      if (this.verifier.running) return true;
      this.repairRunning = false;
      const st = this.verifier.status();
      if (st.state === 'done' && st.trigger === 'unclean-stop') {
        this.opts.repairDue = undefined;
        due.done().catch((e: unknown) => this.opts.logger.error({ err: e }, 'could not record the repair run after the unclean stop as done (it runs again at the next start)'));
        return false;
      }
    }
    if (this.verifier.running || this.pausedBy) return true;
    const s = this.shipper.stats();
    if (!s.connected || s.syncing) return true;
    if (this.startRun('unclean-stop', 'the repair run after an unclean stop could not start (tried again)', due.ranges)) {
      this.repairRunning = true;
      const { ranges, bytes } = this.repairDueStatus()!;
      this.opts.logger.warn({ since: due.since, ranges, bytes }, due.ranges ? 'repair run after an unclean stop: comparing the regions that were being written with the replica (an image may hold a write whose record was lost)' : 'repair run after an unclean stop: comparing every volume with the replica (an image may hold a write whose record was lost)');
    }
    return true;
  }

  /** Start the scheduled verify when it is due and the replica is there to compare with (else: as soon as it is). */
  private checkSchedule(): void {
    if (this.checkRepairDue()) return;
    const due = this.nextVerifyAt();
    // Paused: due when shipping resumes.
    if (due === undefined || this.verifier.running || this.pausedBy || Date.now() < due) return;
    const s = this.shipper.stats();
    if (!s.connected || s.syncing) return;
    this.startRun('schedule', 'scheduled verify could not start');
  }

  /** A run over every volume this site starts itself (a repair one after an unclean stop); a refusal is logged once per reason. */
  private startRun(trigger: 'schedule' | 'unclean-stop', refused: string, only?: VerifyRange[]): boolean {
    try {
      this.verifier.start([], this.opts.verifyRateBytesPerSec ?? 0, trigger === 'unclean-stop', trigger, only);
      this.scheduleRefusal = '';
      return true;
    } catch (e) {
      const why = (e as Error).message;
      if (why !== this.scheduleRefusal) this.opts.logger.warn({ err: e }, refused);
      this.scheduleRefusal = why;
      return false;
    }
  }

  private tick(): void {
    this.checkSchedule();
    const b = this.backlog();
    const appended = this.opts.journal.appendedBytesTotal();
    const appendedDelta = appended - this.lastAppended;
    this.lastAppended = appended;
    const ackedDelta = Math.max(0, this.lastBacklog + appendedDelta - b.backlogBytes);
    this.lastBacklog = b.backlogBytes;
    const newBaseline = b.syncing !== this.lastShape.syncing || b.connected !== this.lastShape.connected;
    this.lastShape = { syncing: b.syncing, connected: b.connected };
    const d = this.controller.observe({
      nowMs: performance.now(),
      oldestUnackedMs: b.oldestUnackedMono,
      backlogBytes: b.backlogBytes,
      ackedBytesDelta: ackedDelta,
      appendedBytesDelta: appendedDelta,
      paused: this.pausedBy !== null,
      throttleCannotHelp: !b.connected || b.syncing,
      newBaseline,
    });
    const log = this.opts.logger;
    if (d.targetMissed !== this.missed) {
      this.missed = d.targetMissed;
      if (d.targetMissed) log.warn({ rpoSeconds: round(d.rpoSeconds), targetSeconds: this.controller.targetSeconds, backlogBytes: b.backlogBytes, paused: this.pausedBy !== null || undefined }, this.pausedBy ? 'RPO target missed (shipping is paused: offsite resume)' : 'RPO target missed');
      else log.info({ rpoSeconds: round(d.rpoSeconds), targetSeconds: this.controller.targetSeconds }, 'RPO back within target');
    }
    if (d.coalesce !== this.coalescingLogged) {
      this.coalescingLogged = d.coalesce;
      log.info({ coalesce: d.coalesce, projectedRpoSeconds: round(d.projectedRpoSeconds) }, d.coalesce ? 'RPO policy: coalescing overwrites' : 'RPO policy: coalescing off');
    }
  }

  decision(): RpoDecision {
    return this.controller.current;
  }

  status(): PrimaryReplicationStatus {
    const s: ShipperStats = this.shipper.stats();
    const b = this.backlog();
    const d = this.controller.current;
    const rpoSeconds = b.oldestUnackedMono === undefined ? 0 : Math.max(0, (performance.now() - b.oldestUnackedMono) / 1000);
    return {
      ackedSeq: s.ackedSeq,
      rpoSeconds: round(rpoSeconds),
      backlogBytes: b.backlogBytes,
      consistency: !s.connected ? 'disconnected' : s.syncing ? 'syncing' : 'replicating',
      replicaConsistent: s.connected && !s.syncing,
      link: {
        connected: s.connected,
        replica: `${this.opts.host}:${this.opts.port}`,
        replicaSiteId: s.replicaSiteId,
        bytesRaw: s.bytesRawSent,
        bytesWire: s.bytesWireSent,
        rttMs: round(s.rttMs),
        connects: s.connects,
        disconnects: s.disconnects,
        maxBandwidthBytesPerSec: this.shipper.bandwidth,
        maxBandwidthSource: this.bandwidthSource,
        configuredMaxBandwidthBytesPerSec: this.opts.configuredBandwidthBytesPerSec ?? this.opts.maxBandwidthBytesPerSec,
        lastError: s.lastError,
      },
      rpo: {
        targetSeconds: this.controller.targetSeconds,
        policy: this.controller.policy,
        source: this.rpoSource,
        configuredTargetSeconds: (this.opts.configuredRpo?.targetMs ?? this.opts.rpoTargetMs) / 1000,
        configuredPolicy: this.opts.configuredRpo?.policy ?? this.opts.rpoPolicy,
        projectedSeconds: round(d.projectedRpoSeconds),
        drainBytesPerSec: Math.round(d.drainBytesPerSec),
        coalescing: d.coalesce,
        coalescedBytesSaved: s.coalescedBytesSaved,
        throttleDelayMs: round(d.throttleDelayMs),
        targetMissed: d.targetMissed,
      },
      sync: {
        running: s.syncing,
        started: s.syncsStarted,
        resumed: s.syncsResumed,
        completed: s.syncsCompleted,
        remainingBytes: s.syncRemainingBytes,
        totalBytes: s.syncTotalBytes,
        chunksSent: s.syncChunksSent,
        chunksSkipped: s.syncChunksSkipped,
      },
      replicaAppliedSeq: s.replicaAppliedSeq,
      paused: this.pausedBy && { ...this.pausedBy },
      repairDue: this.repairDueStatus(),
    };
  }

  private repairDueStatus(): PrimaryReplicationStatus['repairDue'] {
    const due = this.opts.repairDue;
    if (!due) return null;
    return { since: due.since, running: this.repairRunning, ranges: due.ranges?.length ?? null, bytes: due.ranges ? due.ranges.reduce((n, r) => n + r.lengthBytes, 0) : null };
  }
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}
