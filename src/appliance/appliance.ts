/**
 * One site: opens the data directory and volumes, builds a SCSI target per volume, serves
 * them over iSCSI, and shuts everything down in order. The HTTP/metrics side lives in ops/.
 */
import { IscsiServer } from '../iscsi/server';
import type { TargetDirectory, TargetEntry } from '../iscsi/targets';
import { createScsiTarget, naaDesignator } from '../scsi';
import type { Logger } from '../common/logger';
import { formatHostPort, type HostPort } from '../common/units';
import { constants as fsConstants } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { TestCopyVolume } from '../volume/test-copy';
import { Journal } from '../journal/wal';
import { resolvePoint } from '../journal/point-in-time';
import { Bookmarks } from '../journal/bookmarks';
import { FileVolume } from '../volume/file-volume';
import { ImageTracker, JournaledVolume, JournalKeeper, recoverImages } from '../volume/journaled';
import { readIntentFile, WriteIntentMap, type IntentFound } from '../volume/write-intent';
import { ApplyGate, ReplicaVolume } from '../volume/replica';
import type { Volume } from '../volume/volume';
import { Receiver } from '../replication/receiver';
import { readLinkKey, type LinkKey } from '../replication/link-security';
import { ReplicaStore } from './replica';
import { LineageFile, newGeneration, type Generation, type Lineage } from './lineage';
import { elapsedMaxMs, instant, type Instant } from '../common/clock';
import { requestQuorumLease, witnessLeaseMs, witnessMajority, type LeaseAnswer, type WitnessVote } from './witness';
import { clearWitnessEpochs, loadWitnessEpochs, saveWitnessEpochs, type WitnessEpochs } from './witness-epochs';
import { clearBandwidthChange, saveBandwidthChange, startingBandwidth } from './bandwidth-setting';
import { clearRpoChange, saveRpoChange, startingRpo, type RpoSetting } from './rpo-setting';
import { clearPause, savePause, savedPause } from './pause-setting';
import { addedVolumes, forgetAddedVolume, recordAddedVolume } from './added-volumes';
import { moveRemovedAside, recordRemovedVolume, removedDirName, removedVolumes, type RemovedVolume } from './removed-volumes';
import { OffsiteError } from '../common/errors';
import { PrimaryReplication, type PrimaryReplicationStatus, type ReplicationPause } from './replication';
import { joinRanges, VerifyError, type VerifyRange, type VerifyRequest, type VerifyStatus } from '../replication/verify';
import { readJsonFile, removeJsonFile, writeJsonFile } from '../common/json-file';
import { targetName, type ApplianceConfig, type TargetAuthConfig, type VolumeConfig } from './config';
import { DataDir, type DataDirIdentity } from './datadir';

type ScsiTargetHandle = Awaited<ReturnType<typeof createScsiTarget>>;

interface ServedVolume {
  volume: Volume;
  image: FileVolume;
  target: ScsiTargetHandle;
  entry: TargetEntry;
}

export interface VolumeStatus {
  name: string;
  sizeBytes: number;
  readOnly: boolean;
  targetName: string;
  /** Journaled writes whose image write failed, retried from the journal (writes are refused meanwhile); 0 normally. */
  imageBehindRecords: number;
  /**
   * Bytes in the regions the write-intent map has marked (written since the last checkpoint):
   * what the repair after a power cut now would compare. 0 for a volume without a map.
   */
  writeIntentBytes: number;
}

export interface ApplianceStatus {
  role: 'primary' | 'replica';
  siteId: string;
  startedAt: string;
  iscsi: string;
  volumes: VolumeStatus[];
  /** Highest journal sequence number appended (0 without a journal). */
  headSeq: number;
  journal?: {
    oldestSeq: number;
    records: number;
    bytes: number;
    checkpointSeq: number;
    /** What `offsite replay` can reproduce: sequence and time range. */
    window: { fromSeq: number; toSeq: number; fromTime?: string; toTime?: string };
  };
  /** Bookmarks held here (offsite bookmarks lists them): how many, and the newest. */
  bookmarks?: { count: number; newest: BookmarkView | null };
  /**
   * Volumes removed here (offsite remove-volume; on a replica, its copies of volumes the primary
   * removed, retired once every write of them arrived), where their files went, and on a
   * replica the removals it still waits to retire.
   */
  removedVolumes: { name: string; sizeBytes: number; lastSeq: number; removedAt: string; movedTo: string; incomplete?: boolean }[];
  pendingRemovals?: { name: string; lastSeq: number; incomplete?: boolean }[];
  // --- primary with --replicate-to ---
  ackedSeq?: number;
  rpoSeconds?: number;
  backlogBytes?: number;
  consistency?: string;
  link?: Record<string, unknown>;
  replication?: Omit<PrimaryReplicationStatus, 'ackedSeq' | 'rpoSeconds' | 'backlogBytes' | 'consistency' | 'link'>;
  /** Online verify against the replica (primary): the running or last run, and the schedule. */
  verify?: VerifyStatus & { scheduleEverySeconds: number; nextScheduledAt?: string };
  // --- replica ---
  receivedSeq?: number;
  appliedSeq?: number;
  state?: 'syncing' | 'consistent';
  consistentPoint?: { seq: number; primaryTime?: string } | null;
  /** A delta sync is staged whole: the volumes stay at the consistent point until it commits. */
  stagingDeltaSync?: boolean;
  /** Replica: the running test failover (offsite test-failover), if any. */
  testFailover?: TestFailoverStatus;
  /** Replica: what the primary's online verify compared and found here since this process started. */
  verified?: { comparedBytes: number; mismatchedChunks: number; repairedBytes: number };
  primarySiteId?: string;
  witness?: { address: string; authenticated: boolean; fenced: boolean; reason: string; takenOver: boolean; reachable: boolean; quorum: number; witnesses: WitnessVote[] };
}

/** A test failover (replica): its writable copies, and the earlier point they were made at, if any. */
export interface TestFailoverStatus {
  active: boolean;
  targets: string[];
  point?: { seq: number; primaryTime?: string };
}

/** A bookmark as listed (GET /bookmarks): its point, and whether this site's history still holds it. */
export interface BookmarkView {
  name: string;
  seq: number;
  time: string;
  state: 'retained' | 'not retained' | 'not here yet';
}

/** An earlier point of the history, as an operator names it. */
export interface PointRequest {
  seq?: number;
  timeMs?: number;
  bookmark?: string;
}

/** GET /history: the retained records by time. */
export interface HistoryView {
  role: 'primary' | 'replica';
  bucketSeconds: number;
  window: { fromSeq: number; toSeq: number; fromTime?: string; toTime?: string };
  /** The state the oldest retained records start from (history before it was folded in). */
  base: { seq: number; time?: string } | null;
  /** Only the buckets holding records; `point`: the latest replayable point up to lastSeq. */
  buckets: { start: string; firstSeq: number; lastSeq: number; point: number; records: number; bytes: number; volumes: Record<string, number>; bookmarks?: string[] }[];
}

/** Observers the ops layer attaches (metrics), so lower layers never import prom-client. */
export interface ApplianceHooks {
  onCommandComplete?: (volume: string, op: string, status: number, durationNs: bigint) => void;
  /** The replica decided to take over (witness agreed): promote it (the serve command restarts it as primary). */
  requestPromotion?: (reason: string) => Promise<unknown>;
}

/**
 * Without a witness, how long the primary must have been silent before an operator's promote
 * (not --force): OFFSITE_PROMOTE_QUIET_MS, default 10 s, twice a primary's longest wait between
 * two attempts to reconnect (the shipper's backoff tops out at 5 s).
 */
export function promoteQuietMs(): number {
  const v = Number(process.env.OFFSITE_PROMOTE_QUIET_MS ?? 10_000);
  return Number.isFinite(v) && v >= 0 ? v : 10_000;
}

export class Appliance {
  private readonly served = new Map<string, ServedVolume>();
  /** The earlier point the running test failover's copies show (undefined: the point it started at). */
  private testPoint?: TestFailoverStatus['point'];
  private journal?: Journal;
  /** Named points of the history (offsite bookmark): taken here as a primary, kept from the primary as a replica. */
  private bookmarks?: Bookmarks;
  private keeper?: JournalKeeper;
  /**
   * Recovery left records of a volume not served writable out of its image (RecoveryReport.unappliedFromSeq):
   * the journal keeps them until a start that serves it. Fixed for the process's life (a volume
   * neither served nor removed cannot be added or removed at run time).
   */
  private keepFrom?: number;
  private readonly tracker = new ImageTracker();
  private iscsi?: IscsiServer;
  private identity?: DataDirIdentity;
  private iscsiAddress?: HostPort;
  private readonly startedAt = new Date();
  private stopping?: Promise<void>;
  private replication?: PrimaryReplication;
  private receiver?: Receiver;
  private replicaStore?: ReplicaStore;
  private replicaTimer?: NodeJS.Timeout;
  private replicationAddress?: HostPort;
  private lineage: Lineage = [];
  private witnessTimer?: NodeJS.Timeout;
  private fenceTimer?: NodeJS.Timeout;
  private fence = { fenced: false, takenOver: false, witnessReachable: false, reason: '', votes: [] as WitnessVote[] };
  readonly dataDir: DataDir;
  /** Volumes removed here (offsite remove-volume; on a replica, copies it retired). */
  private removed: RemovedVolume[] = [];
  /** A replica retiring its copy of a volume the primary removed (one at a time). */
  private retiring?: Promise<void>;

  /**
   * The start got through open(): what an unclean stop before it calls for (a new generation, a
   * repair run) is recorded. Until then a stop keeps the pid file (the next start redoes it).
   */
  private opened = false;

  private constructor(readonly config: ApplianceConfig, readonly logger: Logger, private readonly hooks: ApplianceHooks = {}) {
    this.dataDir = new DataDir(config.dataDir);
  }

  static async start(config: ApplianceConfig, logger: Logger, hooks: ApplianceHooks = {}): Promise<Appliance> {
    const app = new Appliance(config, logger, hooks);
    try {
      await app.open();
      app.opened = true;
    } catch (e) {
      await app.stop().catch(() => undefined);
      throw e;
    }
    return app;
  }

  private async open(): Promise<void> {
    const { config, logger } = this;
    this.identity = await this.dataDir.init();
    const { uncleanStop } = await this.dataDir.lock();
    await this.loadRemoved();
    if (config.role === 'replica') return this.openReplica();
    this.lineage = await LineageFile.in(this.dataDir.root).load();
    const existing = await FileVolume.list(this.dataDir.volumesDir);
    const wanted: VolumeConfig[] = config.volumes.length ? [...config.volumes] : existing.map((name) => ({ name }));
    for (const v of wanted) {
      const gone = this.removed.find((r) => r.name === v.name);
      if (gone) throw new OffsiteError('VOLUME_REMOVED', `volume ${v.name} was removed (offsite remove-volume, ${gone.removedAt}; its files are in ${path.join(this.dataDir.root, gone.movedTo)}): take it out of the configuration, or name a new volume differently`);
    }
    if (config.volumes.length) {
      // Volumes added at run time are served though the configuration does not name them (yet).
      const added = await addedVolumes(this.dataDir.root);
      if (added.unreadable) logger.warn('the list of volumes added at run time (state/added-volumes.json) is unreadable: only the configured volumes are served');
      for (const name of added.names) {
        if (wanted.some((v) => v.name === name) || !existing.includes(name)) continue;
        wanted.push({ name });
        logger.info({ volume: name }, 'volume added at run time: served (add it to the configuration to say so there)');
      }
    }
    const images = new Map<string, FileVolume>();
    for (const v of wanted) {
      // An existing volume opens at its own size: a configured size above it grows it (online
      // growth, declared); one below it (the volume grew at run time since) is served as it is,
      // since a volume never shrinks.
      const exists = existing.includes(v.name);
      const image = await FileVolume.open({ dir: this.dataDir.volumesDir, name: v.name, sizeBytes: exists ? undefined : v.sizeBytes, readOnly: v.readOnly });
      images.set(v.name, image);
      if (exists && v.sizeBytes !== undefined && v.sizeBytes !== image.sizeBytes) {
        if (v.sizeBytes > image.sizeBytes && !image.readOnly) {
          const from = image.sizeBytes;
          await image.grow(v.sizeBytes);
          logger.warn({ volume: v.name, sizeBytes: image.sizeBytes, previousSizeBytes: from }, 'volume grown to its configured size');
        } else {
          logger.warn({ volume: v.name, sizeBytes: image.sizeBytes, configuredSizeBytes: v.sizeBytes }, v.sizeBytes > image.sizeBytes ? 'volume is smaller than configured but read-only: served at its size' : 'volume is larger than the configured size (created larger, or grown since): served at its size; volumes never shrink');
        }
      }
    }
    const journaled = config.journal.enabled;
    if (journaled) {
      const journal = (this.journal = await this.openJournal(!!config.replication.replicateTo));
      this.bookmarks = await Bookmarks.load(journal);
      // A volume that was here before the journal knew it holds data no record has.
      for (const name of images.keys()) await journal.registerVolume(name, { holdsData: existing.includes(name) });
      await this.cutPartialCoalesced(journal);
      const writable = new Map([...images].filter(([, img]) => !img.readOnly));
      const report = await recoverImages(journal, writable, logger, new Set(this.removed.map((r) => r.name)));
      this.keepFrom = report.unappliedFromSeq;
      if (report.records > 0) {
        logger.warn({ ...report }, 'unclean stop detected: journal tail replayed onto the images');
      }
      if (journal.keepsHistory && journal.awaitsBase) await this.startHistory(journal, images);
      logger.info({ headSeq: journal.headSeq(), oldestSeq: journal.oldestSeq(), records: journal.stats().records }, 'journal open');
    } else if (config.role === 'primary') {
      logger.warn('journal disabled (--no-journal): writes go straight to the images; no replication or point-in-time replay');
    }
    // What the write-intent maps held, read before anything is written again (see repairDue).
    const intents = this.journal && uncleanStop ? await this.readIntents(images) : undefined;
    for (const v of wanted) {
      const image = images.get(v.name)!;
      const volume: Volume = this.journal && !image.readOnly ? new JournaledVolume(image, this.journal, this.tracker) : image;
      if (volume instanceof JournaledVolume) await this.attachIntent(volume, false);
      await this.serveVolume(volume, image, !existing.includes(v.name));
    }
    if (this.journal && this.lineage.length === 0) {
      // The first generation of this data: it starts with the first write ever journaled here.
      await this.pushGeneration(1);
    } else if (this.journal) {
      await this.startGeneration(this.journal.headSeq(), uncleanStop);
    }
    if (this.journal) {
      const journal = this.journal;
      const volumeLogger = logger.child({ layer: 'volume' });
      this.forEachJournaledVolume((v) => (v.logger = volumeLogger));
      this.keeper = new JournalKeeper(journal, () => this.tracker.safeSeq(journal.headSeq()), () => this.journaledVolumes(), logger.child({ layer: 'journal' }), { trimUnsynced: true, sizeOf: (name) => this.sizeOfUnserved(name), keepFrom: this.keepFrom });
      // Recorded with or without a replica now: one that comes later (resuming from its point)
      // lacks what a power cut left in the images just the same.
      const repairDue = await this.repairDue(uncleanStop, intents, images);
      const to = config.replication.replicateTo;
      if (repairDue && !to) logger.warn({ since: repairDue.since, ranges: repairDue.ranges?.length }, 'a repair after an unclean stop is due: it runs once this primary replicates again (state/repair-due.json)');
      if (to) {
        const configured = config.replication.maxBandwidthBytesPerSec;
        const bw = await startingBandwidth(this.dataDir.root, configured);
        if (bw.change) logger.info({ maxBandwidthBytesPerSec: bw.bytesPerSec, configuredMaxBandwidthBytesPerSec: configured, changedAt: bw.change.changedAt }, 'replication bandwidth cap: keeping the change made at run time (offsite bandwidth --reset returns to the configured cap)');
        else if (bw.dropped === 'unreadable') logger.warn({ maxBandwidthBytesPerSec: configured }, 'replication bandwidth cap: the saved run-time change is unreadable; using the configured cap');
        else if (bw.dropped) logger.warn({ maxBandwidthBytesPerSec: configured, dropped: bw.dropped }, 'replication bandwidth cap: the configured cap changed since the run-time change; the configuration applies');
        const configuredRpo = { targetMs: config.replication.rpoTargetMs, policy: config.replication.rpoPolicy };
        const rpo = await startingRpo(this.dataDir.root, configuredRpo);
        if (rpo.change) logger.info({ rpoTargetSeconds: rpo.targetMs / 1000, rpoPolicy: rpo.policy, configured: configuredRpo, changedAt: rpo.change.changedAt }, 'RPO target and policy: keeping the change made at run time (offsite rpo --reset returns to the configured ones)');
        else if (rpo.dropped === 'unreadable') logger.warn('RPO target and policy: the saved run-time change is unreadable; using the configured ones');
        else if (rpo.dropped) logger.warn({ configured: configuredRpo, dropped: rpo.dropped }, 'RPO target and policy: the configuration changed since the run-time change; the configuration applies');
        const pause = await savedPause(this.dataDir.root);
        if (pause === 'unreadable') logger.warn('replication pause: the saved pause is unreadable; ignored, shipping');
        else if (pause) logger.warn({ pausedAt: pause.pausedAt, reason: pause.reason }, 'replication is PAUSED (offsite pause, kept across restarts): writes are journaled, nothing is shipped until offsite resume');
        const repl = (this.replication = new PrimaryReplication({
          siteId: this.identity.siteId,
          journal,
          tracker: this.tracker,
          images: () => new Map([...this.served].map(([n, sv]) => [n, sv.image])),
          host: to.host,
          port: to.port,
          maxBandwidthBytesPerSec: bw.bytesPerSec,
          bandwidthSource: bw.source,
          configuredBandwidthBytesPerSec: configured,
          rpoTargetMs: rpo.targetMs,
          rpoPolicy: rpo.policy,
          rpoSource: rpo.source,
          configuredRpo,
          logger: logger.child({ layer: 'replication' }),
          lineage: () => this.lineage,
          forkHistory: () => this.forkHistory(),
          bookmarks: this.bookmarks,
          removedVolumes: () => this.removed.map((r) => ({ name: r.name, lastSeq: r.lastSeq, sizeBytes: r.sizeBytes, blockSize: r.blockSize })),
          linkKey: await this.linkKey(),
          verifyEveryMs: config.replication.verifyEveryMs,
          verifyRateBytesPerSec: config.replication.verifyRateBytesPerSec,
          verifyResult: {
            load: async () => (await readJsonFile(this.verifyResultFile())) as VerifyStatus | undefined,
            save: (s) => writeJsonFile(this.verifyResultFile(), s),
          },
          paused: pause === 'unreadable' ? undefined : pause,
          repairDue,
          missingSince: await this.missingSince(),
        }));
        this.forEachJournaledVolume((v) => (v.ackDelay = () => repl.ackDelayMs()));
        await repl.restoreVerifyResult();
      }
      // The maps start clear (what they held is in the repair due), before the first write.
      for (const v of this.journaledVolumes()) await v.intent?.reset();
    }
    if (config.witness) {
      this.warnWitnessSetup();
      this.startLeaseKeeper(config.witness.addresses, await loadWitnessEpochs(this.dataDir.root));
    }
    await this.listenIscsi();
    if (this.replication) {
      this.replication.start();
      logger.info({ replicateTo: formatHostPort(config.replication.replicateTo!), rpoTargetSeconds: this.replication.status().rpo.targetSeconds, rpoPolicy: this.replication.status().rpo.policy, maxBandwidthBytesPerSec: this.replication.status().link.maxBandwidthBytesPerSec }, 'replication to the replica started');
    }
  }

  /**
   * Before anything is replayed onto the volumes: the first records of a coalesced batch that a
   * crash cut short (as a replica) go, since the volumes must never show them alone.
   */
  private async cutPartialCoalesced(journal: Journal): Promise<void> {
    const cut = await journal.cutPartialCoalesced();
    if (cut) this.logger.warn({ batchFrom: cut.from, batchTo: cut.to, recordsDropped: cut.records, headSeq: journal.headSeq() }, 'a coalesced batch was stored in part (crash or failed store): its records are dropped and come again from the primary');
  }

  /**
   * Point-in-time history (re)starts here, at the journal's head: the images, which hold every
   * record (recovered, checkpointed, nothing served yet), are copied as the base. Needed when
   * the journal has no base for its records (history turned on after records were trimmed
   * without it, a volume that held data before the journal knew it, a reset never rebased):
   * folding onto empty images would build a base missing those writes. The records stay
   * (the replica may still need them); points before the head are outside the window.
   */
  private async startHistory(journal: Journal, images: ReadonlyMap<string, FileVolume>): Promise<void> {
    const seq = journal.headSeq();
    await journal.rebase(
      seq,
      journal.timeOf(seq) ?? Date.now(),
      async (baseDir) => {
        await mkdir(baseDir, { recursive: true });
        for (const [name, image] of images) {
          await image.flush();
          await copyFile(image.imagePath, path.join(baseDir, `${name}.img`), fsConstants.COPYFILE_FICLONE);
        }
      },
      { keepRecords: true },
    );
    this.logger.warn({ seq }, 'point-in-time history starts now (the journal had no base for its records: history turned on after records were trimmed without it, a volume held data before the journal knew it, or a reset was never rebased): earlier points are not replayable');
  }

  /** This site's journal with the configured retention (`replicated`: keep records until the replica has them). */
  private openJournal(replicated: boolean): Promise<Journal> {
    const { config, logger } = this;
    return Journal.open({
      dir: this.dataDir.journalDir,
      logger: logger.child({ layer: 'journal' }),
      maxBytes: config.journal.maxBytes,
      retainMs: config.journal.retainMs,
      retainBytes: config.journal.retainBytes,
      replicated,
      ownsRetention: true,
    });
  }

  /** The replication link's key (undefined with --insecure-link, which is logged). */
  private async linkKey(): Promise<LinkKey | undefined> {
    const file = this.config.replication.linkKeyFile;
    if (file) return readLinkKey(file);
    this.logger.warn('replication link is plain TCP (--insecure-link): unauthenticated and unencrypted');
    return undefined;
  }

  private journaledVolumes(): JournaledVolume[] {
    return [...this.served.values()].map((s) => s.volume).filter((v): v is JournaledVolume => v instanceof JournaledVolume);
  }

  /** Per-volume settings (throttle, split-brain gate): applied to the journaled volumes served now and to those added later. */
  private readonly journaledVolumeSetup: ((v: JournaledVolume) => void)[] = [];

  private forEachJournaledVolume(setup: (v: JournaledVolume) => void): void {
    this.journaledVolumeSetup.push(setup);
    for (const v of this.journaledVolumes()) setup(v);
  }

  private setFenced(on: boolean, reason: string): void {
    if (this.fence.fenced === on) {
      if (on) this.fence.reason = reason; // still fenced, perhaps for another reason now: no new log line
      return;
    }
    this.fence.fenced = on;
    this.fence.reason = on ? reason : '';
    if (on) this.logger.error({ reason }, 'fenced: this site refuses writes');
    else this.logger.warn({ reason }, 'fence lifted: this site accepts writes again');
  }

  /**
   * Primary with a witness. Writes are accepted only while this site can show that no other site
   * may take over: it holds the lease (a majority of witnesses granted it, asked less than half a
   * lease ago), or its replica answered a ping sent less than half a lease ago (a replica that
   * hears its primary does not take over: it waits for a silence of at least a whole lease, and
   * the witness gives the lease away only a whole lease after the last renewal). An open
   * connection is not enough: on a network gone silent it stays open for minutes. Fenced from the
   * start until one of the two holds; fenced for good once another site holds the lease, or a
   * witness says the lease passed to another site since this one held it (superseded: its
   * renewal carries the epoch it was granted, saved in the data directory before it is used).
   * Renewed every quarter lease, checked every 100 ms.
   */
  private startLeaseKeeper(witnesses: string[], savedEpochs: WitnessEpochs): void {
    let epochs = savedEpochs;
    const leaseMs = witnessLeaseMs();
    const siteId = this.identity!.siteId;
    /** Another site holds the lease and this one never has (e.g. just promoted while the old primary's runs out). */
    let heldBy: string | undefined;
    /** When the newest granted request was sent. */
    let granted: Instant | undefined;
    const why = (): string | undefined => {
      if (this.fence.takenOver) return this.fence.reason;
      if (elapsedMaxMs(granted) < leaseMs / 2) return undefined;
      if (heldBy !== undefined) return `waiting for the witness lease (held by ${heldBy})`;
      if ((this.replication?.sinceReplicaConfirmedMs() ?? Infinity) < leaseMs / 2) return undefined;
      return granted ? 'lost both the witness and the replica' : 'waiting for the witness lease';
    };
    // Asked at every write, so a process that was paused or suspended past its lease refuses
    // the first write after it wakes, not only after the next check.
    this.forEachJournaledVolume((v) => (v.writeGate = () => why() === undefined));
    const check = () => {
      const reason = why();
      if (reason === undefined) this.setFenced(false, granted && elapsedMaxMs(granted) < leaseMs / 2 ? 'witness lease granted' : 'replica answering (witness unreachable)');
      else this.setFenced(true, reason);
    };
    this.setFenced(true, 'waiting for the witness lease');
    const tick = async () => {
      // Taken over: fenced for good, and asks no more (a grant it got from a witness that
      // restarted and knows no holder would take the lease from the site that has it).
      if (this.fence.takenOver) return;
      const asked = instant();
      const { answer: r, votes, epochs: got } = await requestQuorumLease(witnesses, siteId, 'primary', leaseMs / 4, this.config.witness?.key, this.witnessProblem, leaseMs, epochs);
      this.fence.votes = votes;
      this.fence.witnessReachable = r !== undefined;
      const takenOver = (why: string, reason: string) => {
        if (this.fence.takenOver) return; // another tick got there first
        this.logger.error({ holder: r?.holder }, why);
        this.fence.takenOver = true;
        this.fence.reason = reason;
        this.setFenced(true, reason);
      };
      if (r?.granted && witnesses.some((w) => got[w] !== undefined && got[w] !== epochs[w])) {
        // Saved before the grant is used: a crash after it still renews with the new epochs.
        const next = { ...epochs, ...got };
        await saveWitnessEpochs(this.dataDir.root, next);
        epochs = next;
      }
      if (r?.superseded) {
        takenOver('the witness gave the lease to another site since this site held it: this site was taken over (demote it and resync it as a replica)', `taken over by ${r.holder ?? 'another site'} (the witness lease passed to it since this site held it)`);
      } else if (r?.granted) {
        // Counted from the asking: each witness granted no earlier, so its lease runs at least this long.
        if (!granted || asked.mono > granted.mono) granted = asked;
        heldBy = undefined;
      } else if (r && !granted) {
        heldBy = `${r.holder ?? 'another site'} for ${r.expiresInMs ?? '?'} ms more`;
      } else if (r) {
        takenOver('another site holds the witness lease: this site was taken over', `taken over by ${r.holder ?? 'another site'}`);
      }
      check();
    };
    const run = () => void tick().catch((e: unknown) => this.logger.error({ err: e }, 'witness lease renewal failed'));
    run();
    this.witnessTimer = setInterval(run, leaseMs / 4);
    this.witnessTimer.unref();
    this.fenceTimer = setInterval(check, 100);
    this.fenceTimer.unref();
  }

  /**
   * Replica with --failover-after: take over when the primary has been silent that long (at least
   * one lease: the primary trusts a pong for half a lease, see startLeaseKeeper) and a majority of
   * the witnesses agree. While asking, pings go unanswered (Receiver.holdPongs), and a refused
   * site answers them again.
   */
  private startFailoverMonitor(witnesses: string[], afterMs: number): void {
    const leaseMs = witnessLeaseMs();
    const silenceMs = Math.max(afterMs, leaseMs);
    if (afterMs < leaseMs) this.logger.warn({ failoverAfterMs: afterMs, leaseMs }, `--failover-after is shorter than the witness lease: taking over after ${silenceMs} ms of silence`);
    let asking = false;
    this.witnessTimer = setInterval(() => {
      const store = this.replicaStore;
      const receiver = this.receiver;
      if (!store || !receiver || asking || !this.hooks.requestPromotion) return;
      if (!store.primarySiteId() || store.syncState() !== 'consistent') return;
      const silentMs = receiver.silentMs();
      if (silentMs < silenceMs) return;
      asking = true;
      receiver.holdPongs = true;
      let promoting = false;
      void requestQuorumLease(witnesses, this.identity!.siteId, 'replica', leaseMs / 4, this.config.witness?.key, this.witnessProblem, leaseMs)
        .then(async ({ answer: lease, votes }) => {
          this.fence.votes = votes;
          if (!lease?.granted) return;
          promoting = true;
          const silent = Math.round(receiver.silentMs());
          this.logger.warn({ silentMs: silent, witness: witnesses.join(','), granted: votes.filter((v) => v.vote === 'granted').length }, 'primary silent and the witness agrees: taking over');
          await this.hooks.requestPromotion!(`primary silent for ${silent} ms`);
        })
        .catch((e: unknown) => this.logger.error({ err: e }, 'automatic takeover failed'))
        .finally(() => {
          asking = false;
          if (!promoting) receiver.holdPongs = false;
        });
    }, 250);
    this.witnessTimer.unref();
  }

  private warnWitnessSetup(): void {
    const w = this.config.witness;
    if (!w) return;
    this.fence.votes = w.addresses.map((address) => ({ address, vote: 'none' }));
    if (!w.key) this.logger.warn({ witness: w.address }, 'witness without --witness-key: lease requests and answers are not authenticated (anyone on the path could grant or refuse the lease)');
    if (w.addresses.length > 1 && w.addresses.length % 2 === 0) this.logger.warn({ witness: w.address }, `${w.addresses.length} witnesses: ${witnessMajority(w.addresses.length)} must agree, so this rides out no more failures than ${w.addresses.length - 1} would; use an odd number`);
  }

  /** Why the witness gave no usable answer: logged when the reason changes, else every 30 s. */
  private lastWitnessProblem = { why: '', at: 0 };
  private readonly witnessProblem = (why: string): void => {
    const now = performance.now();
    if (why === this.lastWitnessProblem.why && now - this.lastWitnessProblem.at < 30_000) return;
    this.lastWitnessProblem = { why, at: now };
    this.logger.warn({ witness: this.config.witness?.address }, why);
  };

  fenceStatus(): typeof this.fence {
    return { ...this.fence };
  }

  /**
   * A primary starts a new generation of its data at every start, right after its journal head
   * and before it takes a write. The shipper sends records before they are synced (the replica
   * syncs them itself), so a primary that lost power can come back at a head below what its
   * replica holds, and would number its next writes like the lost ones; a data directory restored
   * from a backup does the same, and shows no sign of it (its last stop was clean). The new
   * generation tells the replica where this history forks from the one it holds: the handshake
   * (replica.ts acceptPrimary) saves the records past the head aside and resyncs only differing
   * blocks; a replica that holds nothing past the head finds a prefix and just goes on. One
   * lineage entry per start: the cost of not having to tell a restored backup from a restart.
   */
  private async startGeneration(head: number, uncleanStop: boolean): Promise<void> {
    const g = await this.pushGeneration(head + 1);
    this.logger.info({ headSeq: head, uncleanStop, generation: g.id, generations: this.lineage.length }, 'new generation of this data: the next write is numbered right after the journal head');
  }

  /** Add a generation starting at `fromSeq` to this primary's lineage, saved before it counts. */
  private async pushGeneration(fromSeq: number): Promise<Generation> {
    const g = newGeneration(fromSeq);
    const lineage = [...this.lineage, g];
    await LineageFile.in(this.dataDir.root).save(lineage);
    this.lineage = lineage;
    return g;
  }

  /**
   * The replica holds records of the current generation that this primary does not (its journal
   * lost them without a new generation starting: a backup restored over a directory whose last
   * run wrote nothing, a pid file removed by hand). Where the two histories part inside the
   * generation is unknown, so a generation starting where the current one starts is added: the
   * replica's records of the current one all count as split off (saved aside, then only
   * differing blocks resync), and this primary's own go on unchanged.
   */
  private async forkHistory(): Promise<void> {
    const last = this.lineage[this.lineage.length - 1];
    const g = await this.pushGeneration(last.fromSeq);
    this.logger.warn({ fromSeq: last.fromSeq, forkedGeneration: last.id, generation: g.id }, 'the replica holds records of this generation that this primary does not: a new generation starts at the same point, so that the replica resyncs from there');
  }

  /**
   * The time of the oldest write the replica lacks while folded records hold it
   * (state/rpo-missing-since.json; see PrimaryReplicationOptions.missingSince).
   */
  private async missingSince(): Promise<{ at?: number; save(ms: number | undefined): Promise<void> }> {
    const file = this.missingSinceFile();
    const saved = (await readJsonFile(file).catch(() => undefined)) as { sinceMs?: unknown } | undefined;
    const at = typeof saved?.sinceMs === 'number' && Number.isFinite(saved.sinceMs) ? saved.sinceMs : undefined;
    return { at, save: (ms) => (ms === undefined ? removeJsonFile(file) : writeJsonFile(file, { sinceMs: ms, since: new Date(ms).toISOString() })) };
  }

  private missingSinceFile(): string {
    return path.join(this.dataDir.root, 'state', 'rpo-missing-since.json');
  }

  /** Where a volume's write-intent map is kept (src/volume/write-intent.ts). */
  private intentFile(volume: string): string {
    return path.join(this.dataDir.stateDir(volume), 'write-intent.map');
  }

  /** Give a journaled volume its write-intent map (`reset`: cleared now; else by the start, once repairDue has read them). */
  private async attachIntent(v: JournaledVolume, reset: boolean): Promise<void> {
    const map = await WriteIntentMap.open(this.intentFile(v.name), v.sizeBytes);
    if (reset) await map.reset();
    v.intent = map;
  }

  /** The maps of these volumes as the last run left them. */
  private async readIntents(images: ReadonlyMap<string, FileVolume>): Promise<Map<string, IntentFound>> {
    const found = new Map<string, IntentFound>();
    for (const [name, image] of images) found.set(name, await readIntentFile(this.intentFile(name), image.sizeBytes));
    return found;
  }

  /**
   * A repair run (online verify with --repair) is due after an unclean stop of a journaled
   * primary, and stays due (state/repair-due.json, written before anything is shipped) until one
   * has gone over the ranges it names: see PrimaryReplication.checkRepairDue. The ranges are the
   * regions the write-intent maps had marked (a whole volume where its map is missing or
   * unreadable), added to those of a repair still due; a file without ranges (written before
   * there were maps) means every volume. No region marked, nothing due: no image write was under way.
   */
  private async repairDue(uncleanStop: boolean, intents: ReadonlyMap<string, IntentFound> | undefined, images: ReadonlyMap<string, FileVolume>): Promise<{ since: string; ranges?: VerifyRange[]; done(): Promise<void> } | undefined> {
    const file = path.join(this.dataDir.root, 'state', 'repair-due.json');
    const saved = (await readJsonFile(file).catch(() => undefined)) as { since?: unknown; ranges?: unknown } | undefined;
    let since = typeof saved?.since === 'string' ? saved.since : undefined;
    let ranges = since === undefined ? [] : savedRanges(saved?.ranges);
    if (uncleanStop) {
      const marked: VerifyRange[] = [];
      for (const [volume, image] of images) {
        const found = intents?.get(volume) ?? { unknown: 'missing', reason: 'not read' };
        if ('ranges' in found) {
          for (const r of found.ranges) marked.push({ volume, ...r });
        } else {
          this.logger.warn({ volume, reason: found.reason }, 'write-intent map unusable after the unclean stop: the repair covers the whole volume');
          marked.push({ volume, offsetBytes: 0, lengthBytes: image.sizeBytes });
        }
      }
      if (ranges) ranges = joinRanges([...ranges, ...marked]);
      if (since === undefined && ranges?.length === 0) {
        this.logger.info('unclean stop: the write-intent maps show no region being written, so no image can hold a write the journal lost: no repair due');
        return undefined;
      }
      since ??= new Date().toISOString();
      await writeJsonFile(file, { since, reason: 'unclean stop', ranges });
    }
    if (since === undefined) return undefined;
    return {
      since,
      ranges,
      done: async () => {
        await removeJsonFile(file);
        this.logger.info({ since }, 'the repair run after the unclean stop is done');
      },
    };
  }

  private async serveVolume(volume: Volume, image: FileVolume, created: boolean): Promise<void> {
    const { config, logger } = this;
    const name = targetName(config.targetPrefix, volume.name);
    const target = await createScsiTarget({
      targetName: name,
      luns: [{ lun: 0, volume }],
      stateDir: this.dataDir.stateDir(volume.name),
      copyPeerByDesignator: (naa: Buffer) => this.targetByDesignator(naa),
      logger: logger.child({ volume: volume.name }),
      onCommandComplete: this.hooks.onCommandComplete && ((op: string, status: number, ns: bigint) => this.hooks.onCommandComplete!(volume.name, op, status, ns)),
    });
    const entry: TargetEntry = { name, alias: volume.name, auth: toTargetAuth(config.targets[volume.name] ?? config.auth), scsi: target };
    this.served.set(volume.name, { volume, image, target, entry });
    logger.info({ volume: volume.name, sizeBytes: image.sizeBytes, target: name, created, readOnly: volume.readOnly }, 'volume ready');
  }

  private async listenIscsi(): Promise<void> {
    const { config, logger } = this;
    const served = this.served;
    const directory: TargetDirectory = {
      targets: () => [...served.values()].map((s) => s.entry),
      lookup: (n) => [...served.values()].find((s) => s.entry.name === n)?.entry,
    };
    // OFFSITE_LOGIN_RATE_LIMIT=failures/windowSeconds/blockSeconds (default 10/60/60).
    const rl = /^(\d+)\/(\d+(?:\.\d+)?)\/(\d+(?:\.\d+)?)$/.exec(process.env.OFFSITE_LOGIN_RATE_LIMIT ?? '');
    const loginRateLimit = rl ? { failures: Number(rl[1]), windowMs: Number(rl[2]) * 1000, blockMs: Number(rl[3]) * 1000 } : undefined;
    this.iscsi = new IscsiServer({ directory, logger: logger.child({ layer: 'iscsi' }), nopIntervalMs: config.nop.intervalMs, nopTimeoutMs: config.nop.timeoutMs, loginRateLimit });
    this.iscsiAddress = await this.iscsi.listen(config.iscsi.host, config.iscsi.port);
    logger.info({ iscsi: formatHostPort(this.iscsiAddress), role: config.role, siteId: this.identity!.siteId }, 'appliance serving');
  }

  /**
   * A replica: volumes come from the primary (created at the first handshake), served
   * read-only; the receiver stores the primary's records in this site's journal and applies them.
   */
  private async openReplica(): Promise<void> {
    const { config, logger } = this;
    const existing = await FileVolume.list(this.dataDir.volumesDir);
    const gate = new ApplyGate();
    const volumes = new Map<string, ReplicaVolume>();
    const images = new Map<string, FileVolume>();
    for (const name of existing) {
      const image = await FileVolume.open({ dir: this.dataDir.volumesDir, name, readOnly: false });
      images.set(name, image);
      volumes.set(name, new ReplicaVolume(image, gate));
    }
    const journal = (this.journal = await this.openJournal(false));
    this.bookmarks = await Bookmarks.load(journal);
    for (const name of images.keys()) await journal.registerVolume(name);
    // A staged delta sync: while staging, the stored records after its sync point are held (not
    // replayed onto volumes that still show the older consistent point); a commit a crash cut
    // short is redone (staged chunks, then the stored tail) before anything is served.
    const stateDir = path.join(this.dataDir.root, 'state');
    // A pause belonged to this site's time as a primary: a replica ships nothing, and a later
    // promotion must not start paused.
    if ((await savedPause(this.dataDir.root)) !== undefined) {
      await clearPause(this.dataDir.root);
      logger.info('replication pause dropped: this site is now a replica');
    }
    const rewound = await ReplicaStore.finishInterruptedRewind(stateDir, journal, images, logger, this.bookmarks);
    // A staged sync a promotion was giving up (its chunks may be gone): given up for good before
    // the journal's tail (that sync's, stored after the point the volumes hold) could be replayed.
    await ReplicaStore.finishAbandonedStaging(stateDir, this.dataDir.root, journal, logger, this.bookmarks);
    await this.cutPartialCoalesced(journal);
    const staged = await ReplicaStore.stagedAtStart(stateDir);
    if (staged?.committing) await ReplicaStore.finishStagedCommit(this.dataDir.root, images, logger);
    if (staged && !staged.committing) {
      logger.info({ heldSeq: staged.heldSeq, storedThrough: journal.headSeq() }, 'a delta sync is staged: the volumes stay at their consistent point until it completes');
    } else {
      const report = await recoverImages(journal, images, logger, new Set(this.removed.map((r) => r.name)));
      this.keepFrom = report.unappliedFromSeq;
      if (report.records > 0) logger.warn({ ...report }, 'unclean stop detected: stored records replayed onto the replica volumes');
    }
    const store = (this.replicaStore = await ReplicaStore.open({
      siteId: this.identity!.siteId,
      journal,
      volumesDir: this.dataDir.volumesDir,
      stateDir,
      volumes,
      gate,
      onVolume: async (v, created) => this.serveVolume(v, v.image, created),
      onGrown: (v) => this.served.get(v.name)?.target.capacityChanged(),
      logger: logger.child({ layer: 'replica' }),
      bookmarks: this.bookmarks,
    }));
    for (const v of volumes.values()) await this.serveVolume(v, v.image, false);
    for (const r of this.removed) if (!volumes.has(r.name)) store.retired.add(r.name);
    // Records stay until a primary's lineage has been checked: a demoted primary's last writes
    // may be split-off writes that must be saved aside, not trimmed.
    this.keeper = new JournalKeeper(journal, () => store.appliedSeq(), () => volumes.values(), logger.child({ layer: 'journal' }), { canTrim: () => store.primaryChecked, sizeOf: (name) => this.sizeOfUnserved(name), keepFrom: this.keepFrom });
    const history = journal.keepsHistory;
    // The journal restarted at the point a cut-short promotion took the volumes back to.
    // So did a reset that a crash kept from its rebase (a promotion's, a sync's).
    if (rewound?.historyRestarted || journal.awaitsBase) store.rebaseNeeded = true;
    this.replicaTimer = setInterval(() => {
      this.retireRemovedCopies(store);
      if (history && store.rebaseNeeded && store.syncState() === 'consistent' && !store.isStaging()) {
        store.rebaseNeeded = false;
        store.rebaseHistory().then(
          () => logger.info({ seq: store.appliedSeq() }, 'replica history restarts at its consistent point after the sync'),
          (e: unknown) => logger.error({ err: e }, 'replica history rebase failed'),
        );
      }
    }, 1000);
    this.replicaTimer.unref();
    logger.info({ headSeq: journal.headSeq(), appliedSeq: store.appliedSeq(), state: store.syncState(), volumes: [...volumes.keys()] }, 'replica journal open');
    await this.listenIscsi();
    await this.listenForPrimary(store);
    if (config.witness?.failoverAfterMs) {
      this.warnWitnessSetup();
      this.startFailoverMonitor(config.witness.addresses, config.witness.failoverAfterMs);
    }
  }

  private async listenForPrimary(store: ReplicaStore): Promise<void> {
    const { config, logger } = this;
    this.receiver = new Receiver({ sink: store, logger: logger.child({ layer: 'replication' }), linkKey: await this.linkKey() });
    const listen = config.replication.listen!;
    this.replicationAddress = await this.receiver.listen(listen.host, listen.port);
    logger.info({ replication: formatHostPort(this.replicationAddress) }, 'replica listening for the primary');
  }

  /**
   * First half of a promotion: stop receiving, apply everything stored (all of it is a prefix of
   * the primary's history, so this is the last consistent point), and start a new generation
   * right after it. The caller then restarts this site as a primary.
   */
  /**
   * `automatic`: the takeover a witness agreed to (the primary fell silent), not an operator's
   * promote; the witness is then the judge of whether the primary is gone.
   */
  async prepareForPromotion(force: boolean, automatic = false, asked: PointRequest = {}): Promise<{ seq: number; state: string; primaryTime?: string; wentBackFrom?: number; savedTo?: string; blocksRewritten?: number }> {
    const store = this.replicaStore;
    if (!store) throw new OffsiteError('NOT_REPLICA', 'this site is not a replica: nothing to promote');
    const link = this.receiver?.stats();
    // Refused at once while the primary is connected (awaitPrimarySilence).
    const heardAt = !force && !automatic ? await this.awaitPrimarySilence() : undefined;
    if (!force && !automatic && this.config.witness) await this.takeLeaseForPromotion(this.config.witness.addresses);
    const state = store.syncState();
    if (state === 'syncing' && !force) {
      throw new OffsiteError('REPLICA_SYNCING', 'the replica is still syncing (not consistent): promoting would expose a mixed state; use --force to promote anyway');
    }
    const at = this.pointOfBookmark(asked);
    const atPoint = at.seq !== undefined || at.timeMs !== undefined;
    if (atPoint && (state === 'syncing' || store.isStaging())) {
      throw new OffsiteError('REPLICA_SYNCING', 'the replica is syncing: its history has no earlier point to promote at until it is consistent');
    }
    // A point the history cannot give is refused while the replica still receives.
    if (atPoint) await store.checkRewindPoint(at);
    // A copy being retired finishes first; then no removal told by the old primary applies any more.
    await this.retiring;
    await store.forgetPrimaryRemovals();
    const receiver = this.receiver;
    if (receiver) await receiver.close();
    this.receiver = undefined;
    let back: Awaited<ReturnType<ReplicaStore['rewindForPromotion']>> | undefined;
    try {
      // The primary came back between the silence check and the close (the steps in between can
      // take a while): refused, and this site receives again.
      if (heardAt !== undefined && receiver && receiver.stats().lastContactMs !== heardAt) {
        throw new OffsiteError('PRIMARY_CONNECTED', `the primary (site ${receiver.stats().primarySiteId}) connected to this replica while the promotion was getting ready: promoting would leave two sites accepting writes. --force promotes anyway`);
      }
      // A delta sync staged over a consistent point: committed when complete (everything through
      // its consistent point is stored here: the newest consistent state), else given up (the
      // volumes hold the point it was staged over).
      if (store.isStaging()) await store.settleStagingForPromotion();
      await store.idle();
      if (atPoint) {
        // The copies of a test failover would not survive the volumes going back under them.
        if (store.testCopies.size) await this.testFailover('stop');
        back = await store.rewindForPromotion(at);
        if (back.seq < back.fromSeq) this.logger.warn({ seq: back.seq, fromSeq: back.fromSeq, savedTo: back.savedTo, blocksRewritten: back.blocks }, 'promoting at an earlier point: the volumes went back; the later writes are saved aside');
      }
    } catch (e) {
      // Still a replica: it receives again, unless the volumes are half way back or a staged sync
      // is half given up (its staging area may be gone): a restart, or the next promotion, settles that first.
      if (!store.rewindUnfinished() && !store.stagingAbandonUnfinished()) await this.listenForPrimary(store).catch((err: unknown) => this.logger.error({ err }, 'listening for the primary again after a failed promotion failed'));
      throw e;
    }
    const seq = store.appliedSeq();
    // Bookmarks the primary sent ahead of records that never arrived would name points of the
    // history this site now writes: forgotten.
    const dropped = (await this.bookmarks?.dropAfter(seq)) ?? [];
    if (dropped.length) this.logger.warn({ seq, bookmarks: dropped.map((b) => b.name) }, 'bookmarks past the promoted point forgotten (their writes never arrived here)');
    // The promoted site claims the witness lease afresh (it renews under the epochs it is granted then).
    await clearWitnessEpochs(this.dataDir.root);
    // A time kept when this site was a primary before: the new history's replica lacks nothing of it.
    await removeJsonFile(this.missingSinceFile());
    const file = LineageFile.in(this.dataDir.root);
    const lineage = await file.load();
    lineage.push(newGeneration(seq + 1));
    await file.save(lineage);
    const t = store.appliedTimeMs();
    this.logger.warn({ seq, state, forced: force && (state === 'syncing' || !!link?.connected), automatic, generation: lineage[lineage.length - 1].id }, 'promoting this replica: volumes become writable at the last consistent point');
    const wentBack = back && back.seq < back.fromSeq ? { wentBackFrom: back.fromSeq, savedTo: back.savedTo, blocksRewritten: back.blocks } : {};
    return { seq, state, primaryTime: t ? new Date(t).toISOString() : undefined, ...wentBack };
  }

  /**
   * An operator's promote (not --force) goes ahead only once the primary has been silent for a
   * while, not merely disconnected at this instant (a link between two reconnects). With a
   * witness, for a whole lease: a primary that stops hearing this replica stays unfenced for half
   * a lease on its last pong (startLeaseKeeper), so by then it refuses writes, as for an automatic
   * takeover. Without one, promoteQuietMs(). Waits for it; refused if the primary comes back.
   */
  private async awaitPrimarySilence(): Promise<number | undefined> {
    const receiver = this.receiver;
    if (!receiver) return undefined;
    const quietMs = this.config.witness ? witnessLeaseMs() : promoteQuietMs();
    let logged = false;
    for (;;) {
      const silent = receiver.silentMs();
      const link = receiver.stats();
      if (link.connected) {
        throw new OffsiteError('PRIMARY_CONNECTED', `the primary (site ${link.primarySiteId}) is connected to this replica right now, last heard ${Math.round(silent)} ms ago: promoting would leave two sites accepting writes. Stop the primary, or for a planned switch demote it first; --force promotes anyway`);
      }
      if (silent >= quietMs) return link.lastContactMs;
      if (!logged) this.logger.info({ silentMs: Math.round(silent), quietMs }, 'promote: waiting until the primary has been silent long enough');
      logged = true;
      await new Promise((r) => setTimeout(r, Math.min(100, quietMs - silent)));
    }
  }

  /**
   * An operator's promote with a witness takes the lease first, as an automatic takeover does
   * (role replica, a claim): the witness grants it only a whole lease after the primary last
   * renewed. A primary that still renews (cut off from this replica only) keeps it, and the
   * promote is refused: promoted anyway, this site would wait fenced while the old primary went on
   * acknowledging writes that the promoted history never gets. No usable answer: refused too.
   */
  private async takeLeaseForPromotion(witnesses: string[]): Promise<void> {
    const leaseMs = witnessLeaseMs();
    // A primary that just stopped holds its lease for up to one more: asked again until then.
    const deadline = performance.now() + leaseMs * 1.5;
    for (;;) {
      const { answer, votes } = await requestQuorumLease(witnesses, this.identity!.siteId, 'replica', leaseMs / 4, this.config.witness?.key, this.witnessProblem, leaseMs);
      this.fence.votes = votes;
      if (answer?.granted) {
        this.logger.warn({ witness: witnesses.join(','), granted: votes.filter((v) => v.vote === 'granted').length }, 'promote: the witness granted this site the lease');
        return;
      }
      if (performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, Math.min(Math.max(50, (answer?.expiresInMs ?? leaseMs / 4) + 20), leaseMs / 2)));
        continue;
      }
      this.refuseLease(answer);
    }
  }

  private refuseLease(answer: LeaseAnswer | undefined): never {
    if (answer) {
      throw new OffsiteError('PRIMARY_HOLDS_LEASE', `the witness lease is held by ${answer.holder ?? "another site"}, renewed for longer than a lease while this promote waited: the primary is alive and renewing it (cut off from this replica only). Promoting would leave it acknowledging writes this site never gets; stop it, or --force promotes anyway`);
    }
    throw new OffsiteError('WITNESS_UNREACHABLE', 'no usable answer from the witness (see the log for why): this site cannot tell whether the primary still holds the lease; --force promotes anyway');
  }

  /**
   * Test failover: a writable, throw-away copy of every replica volume (as of now, or as of an
   * earlier point of the retained history: `at`), served as `<target>-test`, while replication
   * keeps running underneath. `stop` discards the copies.
   */
  async testFailover(action: 'start' | 'stop', asked: PointRequest = {}): Promise<TestFailoverStatus> {
    const store = this.replicaStore;
    if (!store) throw new OffsiteError('NOT_REPLICA', 'test failover runs on a replica');
    if (action === 'start') {
      if (store.testCopies.size) throw new OffsiteError('TEST_FAILOVER_ACTIVE', 'a test failover is already running; stop it first');
      await this.retiring; // no copy of a volume being retired
      const at = this.pointOfBookmark(asked);
      const atPoint = at.seq !== undefined || at.timeMs !== undefined;
      const journal = this.journal!;
      const dir = path.join(this.dataDir.root, 'test-failover');
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const targets: string[] = [];
      let point: { seq: number; timeMs?: number; rewoundBlocks: number; records: number } | undefined;
      const started = Date.now();
      await store.gate.exclusive(() =>
        journal.holdHistory(async () => {
          // Under the gate the images hold exactly the applied point; the history stays put.
          const now = store.appliedSeq();
          let seq = now;
          let timeMs: number | undefined;
          if (atPoint) {
            if (store.isStaging() || store.syncState() !== 'consistent') throw new OffsiteError('REPLICA_SYNCING', 'the replica is syncing: its history has no point to start a test at until it is consistent');
            ({ seq, timeMs } = await resolvePoint(journal, at));
          }
          const made: { name: string; copy: TestCopyVolume; image: FileVolume }[] = [];
          try {
            let rewoundBlocks = 0;
            let records = 0;
            for (const v of store.volumes.values()) {
              const copy = await TestCopyVolume.create(v.image, store.gate, path.join(dir, `${v.name}.img`));
              made.push({ name: v.name, copy, image: v.image });
              if (seq !== now) {
                const r = await copy.rewind(journal, seq, now);
                rewoundBlocks += r.blocks;
                records += r.records;
              }
            }
            if (atPoint) point = { seq, timeMs, rewoundBlocks, records };
          } catch (e) {
            for (const m of made) await m.copy.close().catch(() => undefined);
            throw e;
          }
          for (const { name, copy, image } of made) {
            store.testCopies.set(name, copy);
            await this.serveVolume(copy, image, true);
            targets.push(targetName(this.config.targetPrefix, copy.name));
          }
        }),
      );
      this.testPoint = point && { seq: point.seq, primaryTime: point.timeMs ? new Date(point.timeMs).toISOString() : undefined };
      const log = point
        ? { targets, seq: point.seq, primaryTime: this.testPoint?.primaryTime, appliedSeq: store.appliedSeq(), blocksRewound: point.rewoundBlocks, recordsRead: point.records, ms: Date.now() - started }
        : { targets, appliedSeq: store.appliedSeq() };
      this.logger.warn(log, point ? 'test failover started at an earlier point: writable throw-away copies served; replication continues' : 'test failover started: writable throw-away copies served; replication continues');
      return this.testFailoverStatus();
    }
    const targets: string[] = [];
    for (const [name, copy] of store.testCopies) {
      const served = this.served.get(copy.name);
      if (served) {
        this.served.delete(copy.name);
        await this.iscsi?.endSessionsOf(served.entry.name);
        await served.target.close().catch(() => undefined);
        targets.push(served.entry.name);
      }
      await store.gate.exclusive(() => copy.close());
      store.testCopies.delete(name);
    }
    this.testPoint = undefined;
    this.logger.warn({ targets }, 'test failover ended: the copies are discarded');
    return { active: false, targets };
  }

  /**
   * Take a bookmark (offsite bookmark NAME, POST /bookmarks): a name for the point right after
   * every write acknowledged so far, e.g. while an application is quiesced. Kept in the journal
   * and shipped to the replica, where test-failover, promote and replay take it by name.
   */
  async addBookmark(name: string): Promise<BookmarkView> {
    if (this.config.role !== 'primary') throw new OffsiteError('NOT_PRIMARY', "a replica keeps its primary's bookmarks: take one on the primary");
    if (!this.journal || !this.bookmarks) throw new OffsiteError('NO_JOURNAL', 'this appliance runs without a journal (--no-journal): it has no history to name a point of');
    const seq = this.journal.headSeq();
    // The records it names are made durable first: after a power cut the journal never comes
    // back shorter than a bookmark, whose sequence number new writes would then reuse.
    await this.journal.sync();
    // Never before the time of the records it names (a wall clock set back: see the journal's stamp).
    const b = await this.bookmarks.add({ name, seq, timeMs: Math.max(Date.now(), this.journal.timeOf(seq) ?? 0) });
    this.replication?.bookmarked();
    this.logger.info({ bookmark: b.name, seq: b.seq }, 'bookmark taken');
    return this.bookmarkView(b);
  }

  /** Every bookmark held here, oldest point first, and whether the history still holds its point. */
  listBookmarks(): BookmarkView[] {
    return (this.bookmarks?.all() ?? []).map((b) => this.bookmarkView(b));
  }

  private bookmarkView(b: { name: string; seq: number; timeMs: number }): BookmarkView {
    const w = this.journal?.window();
    const state = !w ? 'not retained' : b.seq > w.toSeq ? 'not here yet' : b.seq < w.fromSeq ? 'not retained' : 'retained';
    return { name: b.name, seq: b.seq, time: new Date(b.timeMs).toISOString(), state };
  }

  /** An earlier point asked for by bookmark name: its sequence number. */
  private pointOfBookmark(at: PointRequest): { seq?: number; timeMs?: number } {
    if (at.bookmark === undefined) return at;
    const b = this.bookmarks?.get(at.bookmark);
    if (!b) throw new OffsiteError('BOOKMARK_UNKNOWN', `no bookmark '${at.bookmark}' here (${this.bookmarks?.all().length ?? 0} bookmarks: offsite bookmarks lists them)`);
    return { seq: b.seq };
  }

  /**
   * The retained history by time (GET /history, offsite history): what was written when, to
   * find the point to go back to (a burst of overwrites where ransomware started). Each bucket
   * names the latest point in it that can be replayed, tested or promoted at.
   */
  async history(bucketMs: number): Promise<HistoryView> {
    const j = this.journal;
    if (!j) throw new OffsiteError('NO_JOURNAL', 'this appliance runs without a journal (--no-journal): it keeps no history');
    const w = j.window();
    const base = j.baseInfo();
    const iso = (t?: number) => (t ? new Date(t).toISOString() : undefined);
    const buckets: HistoryView['buckets'] = [];
    for (const b of j.history(bucketMs)) {
      const marks = (this.bookmarks?.all() ?? []).filter((m) => m.seq >= b.firstSeq && m.seq <= b.lastSeq).map((m) => m.name);
      buckets.push({ start: iso(b.startMs)!, firstSeq: b.firstSeq, lastSeq: b.lastSeq, point: await j.consistentAtOrBefore(b.lastSeq), records: b.records, bytes: b.bytes, volumes: b.perVolume, ...(marks.length ? { bookmarks: marks } : {}) });
    }
    return {
      role: this.config.role,
      bucketSeconds: bucketMs / 1000,
      window: { fromSeq: w.fromSeq, toSeq: w.toSeq, fromTime: iso(w.fromTimeMs), toTime: iso(w.toTimeMs) },
      base: base && base.seq > 0 ? { seq: base.seq, time: iso(base.timeMs) } : null,
      buckets,
    };
  }

  /** The running test failover (replica): its targets and, when made at an earlier point, that point. */
  private testFailoverStatus(): TestFailoverStatus {
    const copies = [...(this.replicaStore?.testCopies.values() ?? [])];
    const targets = copies.map((c) => targetName(this.config.targetPrefix, c.name));
    return copies.length ? { active: true, targets, ...(this.testPoint ? { point: this.testPoint } : {}) } : { active: false, targets };
  }

  get role(): 'primary' | 'replica' {
    return this.config.role;
  }

  get replicationPort(): number {
    return this.replicationAddress?.port ?? 0;
  }

  private verifyResultFile(): string {
    return path.join(this.dataDir.root, 'state', 'verify.json');
  }

  /**
   * Grow a volume online (offsite resize, POST /resize), on the primary: the image file, then
   * the LU's capacity (initiators get CAPACITY DATA HAS CHANGED), then a new replication
   * handshake that grows the replica's copy before any write past the old end reaches it.
   * Never shrinks. One resize at a time.
   */
  resizeVolume(name: string, sizeBytes: number): Promise<ResizeResult> {
    const run = async (): Promise<ResizeResult> => {
      if (this.config.role !== 'primary') throw new OffsiteError('NOT_PRIMARY', "a replica's volumes follow its primary: grow the volume there, and the replica's copy grows with it");
      const sv = this.served.get(name);
      if (!sv) throw new OffsiteError('UNKNOWN_VOLUME', `no volume ${name} (volumes: ${[...this.served.keys()].join(', ') || 'none'})`);
      if (sv.image.readOnly) throw new OffsiteError('VOLUME_READ_ONLY', `volume ${name} is served read-only`);
      const from = sv.image.sizeBytes;
      const changed = await sv.image.grow(sizeBytes);
      if (changed) {
        sv.target.capacityChanged();
        this.replication?.volumesChanged(`volume ${name} grew`);
        this.logger.warn({ volume: name, sizeBytes, previousSizeBytes: from, replicated: !!this.replication }, 'volume grown online');
      }
      return { volume: name, sizeBytes: sv.image.sizeBytes, previousSizeBytes: from, changed };
    };
    return this.volumeOp(run);
  }

  /** Volume operations (resize, add) run one at a time, each whatever became of the one before. */
  private volumeOps: Promise<unknown> = Promise.resolve();

  private volumeOp<T>(run: () => Promise<T>): Promise<T> {
    const p = this.volumeOps.then(run, run);
    this.volumeOps = p.catch(() => undefined);
    return p;
  }

  /**
   * Add a volume to a running primary (offsite add-volume, POST /volumes): created empty,
   * journaled like the others (throttle, split-brain gate), served as its own target at once,
   * kept across restarts; the replica creates and serves its copy in a new handshake. One volume
   * operation at a time (shared with resize).
   */
  addVolume(name: string, sizeBytes: number): Promise<AddVolumeResult> {
    const run = async (): Promise<AddVolumeResult> => {
      if (this.config.role !== 'primary') throw new OffsiteError('NOT_PRIMARY', "a replica's volumes come from its primary: add the volume there, and the replica creates its copy");
      if (this.served.has(name)) throw new OffsiteError('VOLUME_EXISTS', `volume ${name} is already served`);
      const gone = this.removed.find((r) => r.name === name);
      if (gone) throw new OffsiteError('VOLUME_REMOVED', `a volume ${name} was removed here (${gone.removedAt}; its files are in ${path.join(this.dataDir.root, gone.movedTo)}) and the replica may still hold its copy under that name: choose another name`);
      if ((await FileVolume.list(this.dataDir.volumesDir)).includes(name)) throw new OffsiteError('VOLUME_EXISTS', `volume ${name} already exists in the data directory (not served): name it with --volume and restart to serve it`);
      const image = await FileVolume.open({ dir: this.dataDir.volumesDir, name, sizeBytes, create: true });
      let volume: Volume = image;
      if (this.journal) {
        await this.journal.registerVolume(name);
        const jv = new JournaledVolume(image, this.journal, this.tracker);
        await this.attachIntent(jv, true);
        for (const setup of this.journaledVolumeSetup) setup(jv);
        volume = jv;
      }
      await recordAddedVolume(this.dataDir.root, name);
      await this.serveVolume(volume, image, true);
      this.replication?.volumesChanged(`volume ${name} added`);
      const targetName = this.served.get(name)!.entry.name;
      this.logger.warn({ volume: name, sizeBytes, target: targetName, replicated: !!this.replication }, 'volume added online');
      return { volume: name, sizeBytes, targetName };
    };
    return this.volumeOp(run);
  }

  /**
   * Remove a volume from a running primary (offsite remove-volume, POST /volumes/remove): its
   * target goes (refused while initiators are logged in, unless `force`, which ends their
   * sessions), no write is taken any more, and once every write taken is in the journal and the
   * image, the removal is recorded and the files are moved aside (removed/<name>-<time>/, never
   * deleted). The records stay in the journal: the replica still gets every one of them and then
   * retires its own copy. One volume operation at a time (shared with resize and add).
   */
  removeVolume(name: string, force = false): Promise<RemoveVolumeResult> {
    const run = async (): Promise<RemoveVolumeResult> => {
      if (this.config.role !== 'primary') throw new OffsiteError('NOT_PRIMARY', "a replica's volumes come from its primary: remove the volume there, and the replica retires its copy once it holds every write of it");
      const sv = this.served.get(name);
      if (!sv || sv.volume instanceof TestCopyVolume) throw new OffsiteError('UNKNOWN_VOLUME', `no volume ${name} (volumes: ${[...this.served.keys()].join(', ') || 'none'})`);
      const sessions = this.iscsi?.sessionsOf(sv.entry.name) ?? [];
      if (sessions.length && !force) {
        const who = [...new Set(sessions.map((s) => s.initiatorName))].join(', ');
        throw new OffsiteError('VOLUME_IN_USE', `volume ${name} has ${sessions.length} initiator session(s) logged in (${who}): log them out first, or remove with --force to end them`);
      }
      // From here no write is taken: the target is gone from discovery and login, its sessions end.
      if (sv.volume instanceof JournaledVolume) sv.volume.retired = true;
      this.served.delete(name);
      await this.iscsi?.endSessionsOf(sv.entry.name);
      await sv.target.close().catch(() => undefined);
      let lastSeq = this.journal?.headSeq() ?? 0;
      if (sv.volume instanceof JournaledVolume) lastSeq = Math.max(lastSeq, await sv.volume.settled());
      // Its records durable before the removal names them (after a power cut the journal must not come back shorter).
      await this.journal?.sync();
      await sv.image.flush();
      await sv.image.close();
      const now = new Date();
      const entry: RemovedVolume = { name, sizeBytes: sv.image.sizeBytes, blockSize: sv.image.blockSize, lastSeq, removedAt: now.toISOString(), movedTo: removedDirName(name, now) };
      await this.setAside(entry);
      await forgetAddedVolume(this.dataDir.root, name);
      this.replication?.volumesChanged(`volume ${name} removed`);
      const movedTo = path.join(this.dataDir.root, entry.movedTo);
      this.logger.warn({ volume: name, target: sv.entry.name, lastSeq, movedTo, sessionsEnded: sessions.length, replicated: !!this.replication }, 'volume removed: no longer served; its files are moved aside (delete them when no longer needed)');
      return { volume: name, targetName: sv.entry.name, sizeBytes: entry.sizeBytes, lastSeq, movedTo, sessionsEnded: sessions.length, replicated: !!this.replication };
    };
    return this.volumeOp(run);
  }

  /** Record a removal, then move the volume's files aside (a start finishes a move cut short). */
  private async setAside(entry: RemovedVolume): Promise<void> {
    await recordRemovedVolume(this.dataDir.root, entry);
    this.removed.push(entry);
    await moveRemovedAside(this.dataDir.root, entry);
  }

  /** The volumes removed here; a move a crash cut short is finished (before any volume is opened). */
  private async loadRemoved(): Promise<void> {
    this.removed = await removedVolumes(this.dataDir.root);
    for (const r of this.removed) {
      const moved = await moveRemovedAside(this.dataDir.root, r);
      if (moved.length) this.logger.warn({ volume: r.name, moved, movedTo: path.join(this.dataDir.root, r.movedTo) }, 'a volume removal was cut short: its files are moved aside now');
    }
  }

  /** The size of a volume this site does not serve (removed, or left out of the configuration), for the journal's history base. */
  private async sizeOfUnserved(name: string): Promise<number | undefined> {
    const gone = this.removed.find((r) => r.name === name);
    if (gone) return gone.sizeBytes;
    const meta = (await readJsonFile(path.join(this.dataDir.volumesDir, `${name}.json`)).catch(() => undefined)) as { sizeBytes?: unknown } | undefined;
    return typeof meta?.sizeBytes === 'number' ? meta.sizeBytes : undefined;
  }

  /**
   * A replica: retire its copy of a volume the primary removed, once it holds (and applied) every
   * write of it, is consistent, and runs no test copy of it. Its target goes, its files are moved
   * aside like the primary's. Called every second.
   */
  private retireRemovedCopies(store: ReplicaStore): void {
    // Only on the word of a primary heard in this process's life (a list kept from before a promotion and demotion is not one).
    if (this.retiring || !store.primaryChecked) return;
    const due = store.primaryRemoved().find((r) => store.volumes.has(r.name) && store.appliedSeq() >= r.lastSeq && !store.testCopies.has(r.name));
    if (!due || store.syncState() !== 'consistent' || store.isStaging()) return;
    this.retiring = (async () => {
      const sv = this.served.get(due.name);
      const v = store.volumes.get(due.name)!;
      if (sv) {
        this.served.delete(due.name);
        await this.iscsi?.endSessionsOf(sv.entry.name);
        await sv.target.close().catch(() => undefined);
      }
      await store.gate.exclusive(async () => {
        store.retire(due.name);
        await v.image.flush();
        await v.image.close();
      });
      const now = new Date();
      const entry: RemovedVolume = { name: due.name, sizeBytes: v.image.sizeBytes, blockSize: v.image.blockSize, lastSeq: due.lastSeq, removedAt: now.toISOString(), movedTo: removedDirName(due.name, now), ...(due.incomplete ? { incomplete: true } : {}) };
      await this.setAside(entry);
      if (due.incomplete) this.logger.error({ volume: due.name, movedTo: path.join(this.dataDir.root, entry.movedTo) }, "the retired copy of a removed volume is INCOMPLETE: the primary's journal cap folded some of its writes before they were shipped, and a sync covers only the volumes it serves; the primary's moved-aside copy is the complete one");
      this.logger.warn({ volume: due.name, lastSeq: due.lastSeq, appliedSeq: store.appliedSeq(), movedTo: path.join(this.dataDir.root, entry.movedTo) }, 'the primary removed this volume and every write of it is here: copy retired, no longer served; its files are moved aside (delete them when no longer needed)');
    })()
      .catch((e: unknown) => this.logger.error({ err: e, volume: due.name }, 'retiring the copy of a removed volume failed; retried'))
      .finally(() => {
        this.retiring = undefined;
      });
  }

  /** Admin actions the HTTP API exposes. */
  admin(): { setRpo?: (req: Partial<RpoSetting> | 'configured') => Promise<unknown>; setBandwidth?: (bytesPerSec: number | 'configured') => Promise<unknown>; verify?: (req: VerifyRequest) => Promise<VerifyStatus>; pause?: (req: { reason?: string }) => Promise<PauseResult>; resume?: () => Promise<PauseResult> } {
    const repl = this.replication;
    if (!repl) return {};
    const configured = this.config.replication.maxBandwidthBytesPerSec;
    const pauseResult = (changed: boolean): PauseResult => {
      const st = repl.status();
      return { paused: st.paused, changed, backlogBytes: st.backlogBytes, rpoSeconds: st.rpoSeconds, ackedSeq: st.ackedSeq, headSeq: this.journal?.headSeq() ?? 0 };
    };
    return {
      // Saved before it applies, as the bandwidth: the state the operator was told is the one a restart keeps.
      pause: async (req) => {
        if (repl.paused) return pauseResult(false);
        const p = { pausedAt: new Date().toISOString(), reason: (req.reason ?? '').slice(0, 500) };
        await savePause(this.dataDir.root, p);
        const verifying = repl.verifier.running;
        await repl.pause(p);
        const r = pauseResult(true);
        this.logger.warn({ reason: p.reason || undefined, backlogBytes: r.backlogBytes, ackedSeq: r.ackedSeq, verifyStopped: verifying || undefined }, 'replication PAUSED by the operator: writes are journaled, nothing is shipped until offsite resume');
        return r;
      },
      resume: async () => {
        if (!repl.paused) return pauseResult(false);
        await clearPause(this.dataDir.root);
        const was = repl.resume();
        const r = pauseResult(true);
        this.logger.info({ pausedAt: was?.pausedAt, pausedSeconds: was ? Math.round((Date.now() - Date.parse(was.pausedAt)) / 1000) : undefined, backlogBytes: r.backlogBytes }, 'replication resumed: shipping the backlog');
        return r;
      },
      // Saved before it applies, as the bandwidth. A field left out keeps its current value.
      setRpo: async (req) => {
        const configuredRpo = { targetMs: this.config.replication.rpoTargetMs, policy: this.config.replication.rpoPolicy };
        const now = repl.status().rpo;
        if (req === 'configured') {
          await clearRpoChange(this.dataDir.root);
          repl.setRpo(configuredRpo.targetMs, configuredRpo.policy, 'configured');
        } else {
          const next: RpoSetting = { targetMs: req.targetMs ?? Math.round(now.targetSeconds * 1000), policy: req.policy ?? now.policy };
          await saveRpoChange(this.dataDir.root, { ...next, configuredTargetMs: configuredRpo.targetMs, configuredPolicy: configuredRpo.policy, changedAt: new Date().toISOString() });
          repl.setRpo(next.targetMs, next.policy, 'runtime');
        }
        const r = repl.status().rpo;
        const result = { targetSeconds: r.targetSeconds, policy: r.policy, source: r.source, configuredTargetSeconds: r.configuredTargetSeconds, configuredPolicy: r.configuredPolicy, saved: r.source === 'runtime' };
        this.logger.info({ ...result, previousTargetSeconds: now.targetSeconds, previousPolicy: now.policy }, req === 'configured' ? 'RPO target and policy reset to the configured ones' : 'RPO target and policy changed (saved: kept across restarts)');
        return result;
      },
      verify: async (req) => {
        if (!req.stop && repl.paused) throw new VerifyError('REPLICATION_PAUSED', 'replication is paused (offsite pause): the replica is not moving; verify after offsite resume');
        if (!req.stop) return repl.verifier.start(req.volumes, req.rateBytesPerSec, req.repair);
        if (!repl.verifier.running) throw new VerifyError('VERIFY_NOT_RUNNING', 'no verify is running');
        return repl.verifier.stop();
      },
      // Saved before it applies: the cap the operator was told is the one a restart keeps.
      setBandwidth: async (bps: number | 'configured') => {
        if (bps === 'configured') {
          await clearBandwidthChange(this.dataDir.root);
          repl.setBandwidth(configured, 'configured');
        } else {
          await saveBandwidthChange(this.dataDir.root, { bytesPerSec: bps, configuredBytesPerSec: configured, changedAt: new Date().toISOString() });
          repl.setBandwidth(bps, 'runtime');
        }
        const link = repl.status().link;
        this.logger.info({ maxBandwidthBytesPerSec: link.maxBandwidthBytesPerSec, source: link.maxBandwidthSource, configuredMaxBandwidthBytesPerSec: configured }, bps === 'configured' ? 'replication bandwidth cap reset to the configured cap' : 'replication bandwidth cap changed (saved: kept across restarts)');
        return { maxBandwidthBytesPerSec: link.maxBandwidthBytesPerSec, source: link.maxBandwidthSource, configuredMaxBandwidthBytesPerSec: configured, saved: true };
      },
    };
  }

  verifyStatus(): ReturnType<PrimaryReplication['verifyStatus']> | undefined {
    return this.replication?.verifyStatus();
  }

  replicationStatus(): PrimaryReplicationStatus | undefined {
    return this.replication?.status();
  }

  replicaInfo(): { store: ReplicaStore; receiver?: Receiver } | undefined {
    return this.replicaStore && { store: this.replicaStore, receiver: this.receiver };
  }

  /**
   * The SCSI target serving the volume with this NAA designator, for EXTENDED COPY between
   * targets: it lends its LU only to an initiator port logged in to it, under that nexus's
   * reservations (CopyPeer.copyTargetFor).
   */
  private targetByDesignator(naa: Buffer): ScsiTargetHandle | undefined {
    for (const s of this.served.values()) if (naaDesignator(s.volume).equals(naa)) return s.target;
    return undefined;
  }

  get iscsiPort(): number {
    return this.iscsiAddress?.port ?? 0;
  }

  iscsiStats(): ReturnType<IscsiServer['stats']> | undefined {
    return this.iscsi?.stats();
  }

  scsiStats(): { volume: string; stats: ReturnType<ScsiTargetHandle['stats']> }[] {
    return [...this.served.entries()].map(([volume, s]) => ({ volume, stats: s.target.stats() }));
  }

  status(): ApplianceStatus {
    return {
      role: this.config.role,
      siteId: this.identity?.siteId ?? '',
      startedAt: this.startedAt.toISOString(),
      iscsi: this.iscsiAddress ? formatHostPort(this.iscsiAddress) : '',
      volumes: [...this.served.entries()].map(([name, s]) => ({
        name,
        sizeBytes: s.volume.sizeBytes,
        readOnly: s.volume.readOnly,
        targetName: s.entry.name,
        imageBehindRecords: s.volume instanceof JournaledVolume ? s.volume.imageBehindRecords : 0,
        writeIntentBytes: s.volume instanceof JournaledVolume ? s.volume.writeIntentBytes : 0,
      })),
      headSeq: this.journal?.headSeq() ?? 0,
      journal: this.journal && this.journalStatus(this.journal),
      bookmarks: this.bookmarkSummary(),
      removedVolumes: this.removedSummary(),
      ...this.replicationFields(),
      ...(this.config.witness ? { witness: { address: this.config.witness.address, authenticated: !!this.config.witness.key, fenced: this.fence.fenced, reason: this.fence.reason, takenOver: this.fence.takenOver, reachable: this.fence.witnessReachable, quorum: witnessMajority(this.config.witness.addresses.length), witnesses: this.fence.votes.map((v) => ({ ...v })) } } : {}),
    };
  }

  private replicationFields(): Partial<ApplianceStatus> {
    if (this.replication) {
      const { ackedSeq, rpoSeconds, backlogBytes, consistency, link, ...rest } = this.replication.status();
      return { ackedSeq, rpoSeconds, backlogBytes, consistency, link, replication: rest, verify: this.replication.verifyStatus() };
    }
    const store = this.replicaStore;
    if (store) {
      const r = this.receiver?.stats();
      const applied = store.visibleSeq();
      const t = store.visibleTimeMs();
      const state = store.syncState();
      return {
        receivedSeq: Math.max(r?.receivedSeq ?? 0, store.durableSeq()),
        appliedSeq: applied,
        state,
        consistentPoint: state === 'consistent' ? { seq: applied, primaryTime: t ? new Date(t).toISOString() : undefined } : null,
        stagingDeltaSync: store.isStaging(),
        pendingRemovals: store.primaryRemoved().filter((r) => store.volumes.has(r.name)),
        testFailover: this.testFailoverStatus(),
        // What the primary's online verify found here since this process started (the primary keeps the runs' results).
        verified: verifiedHere(store.counters()),
        primarySiteId: store.primarySiteId(),
        link: {
          connected: r?.connected ?? false,
          listen: this.replicationAddress ? formatHostPort(this.replicationAddress) : '',
          primarySiteId: r?.primarySiteId ?? '',
          bytesWire: r?.bytesWireReceived ?? 0,
          connections: r?.connections ?? 0,
          rejectedFrames: r?.rejectedFrames ?? 0,
          // The primary paused shipping (offsite pause): this copy stays at its point until it resumes.
          primaryPaused: r?.primaryPaused ?? false,
          lastError: r?.lastError ?? '',
          durableSeq: store.durableSeq(),
        },
      };
    }
    return {};
  }

  private journalStatus(j: Journal): ApplianceStatus['journal'] {
    const st = j.stats();
    const w = j.window();
    const iso = (t?: number) => (t ? new Date(t).toISOString() : undefined);
    return {
      oldestSeq: st.oldestSeq,
      records: st.records,
      bytes: st.bytes,
      checkpointSeq: st.imageSeq,
      window: { fromSeq: w.fromSeq, toSeq: w.toSeq, fromTime: iso(w.fromTimeMs), toTime: iso(w.toTimeMs) },
    };
  }

  journalStats(): ReturnType<Journal['stats']> | undefined {
    return this.journal?.stats();
  }

  private removedSummary(): ApplianceStatus['removedVolumes'] {
    return this.removed.map((r) => ({ ...r, movedTo: path.join(this.dataDir.root, r.movedTo) }));
  }

  /** How many bookmarks this site holds, and the newest (by time), for /status and the metrics. */
  bookmarkSummary(): ApplianceStatus['bookmarks'] {
    const all = this.bookmarks?.all();
    if (!all) return undefined;
    let newest: (typeof all)[number] | undefined;
    for (const b of all) if (!newest || b.timeMs > newest.timeMs) newest = b;
    return { count: all.length, newest: newest ? this.bookmarkView(newest) : null };
  }

  /** Which step of stop() is running (named in the log when a stop takes too long). */
  stopStep = '';

  /** Stop serving: sessions ended, volumes synced and closed, lock released. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const step = async (name: string, fn: () => Promise<unknown>, onError?: (e: unknown) => void): Promise<void> => {
        this.stopStep = name;
        const t0 = Date.now();
        await fn().catch((e: unknown) => onError?.(e));
        const ms = Date.now() - t0;
        if (ms > 2000) this.logger.warn({ step: name, ms }, 'stop step slow');
      };
      const logErr = (what: string, extra?: object) => (e: unknown) => this.logger.error({ err: e, ...extra }, what);
      clearInterval(this.witnessTimer);
      clearInterval(this.fenceTimer);
      if (this.iscsi) await step('iscsi sessions', () => this.iscsi!.close(), logErr('iscsi close failed'));
      if (this.replication) await step('shipper', () => this.replication!.stop(), logErr('shipper stop failed'));
      if (this.receiver) await step('receiver', () => this.receiver!.close(), logErr('receiver close failed'));
      clearInterval(this.replicaTimer);
      if (this.replicaStore) await step('replica apply', () => this.replicaStore!.idle());
      if (this.replicaStore?.testCopies.size) await step('test failover', () => this.testFailover('stop'));
      let synced = true;
      const closeFailed = (what: string, extra?: object) => (e: unknown) => {
        synced = false;
        logErr(what, extra)(e);
      };
      for (const s of this.served.values()) await step('scsi targets', () => s.target.close());
      if (this.keeper) await step('checkpoint', () => this.keeper!.stop(), logErr('final journal checkpoint failed'));
      for (const [name, s] of this.served) {
        await step(`close ${name}`, () => s.target.close(), logErr('scsi target close failed', { volume: name }));
        await step(`close ${name}`, () => s.volume.close(), closeFailed('volume close failed', { volume: name }));
      }
      if (this.journal) await step('journal', () => this.journal!.close(), closeFailed('journal close failed'));
      // The pid file goes only after a clean close of a site that started: left behind, it
      // tells the next start that records may be missing (startGeneration, repairDue). A start
      // that failed part-way may not have recorded what an earlier unclean stop called for.
      if (synced && this.opened) await step('unlock', () => this.dataDir.unlock());
      else if (!synced) this.logger.warn('the journal did not close cleanly: the next start treats this stop as unclean');
      this.stopStep = 'done';
      this.logger.info('appliance stopped');
    })();
    return this.stopping;
  }
}

function toTargetAuth(a: TargetAuthConfig): TargetEntry['auth'] {
  return { chap: a.chap, mutualChap: a.mutualChap, allowedInitiators: a.allowedInitiators };
}

/** The answer to POST /volumes/remove. */
export interface RemoveVolumeResult {
  volume: string;
  targetName: string;
  sizeBytes: number;
  /** Every record of the volume has a sequence number at or below this one. */
  lastSeq: number;
  /** Where its files are now. */
  movedTo: string;
  sessionsEnded: number;
  replicated: boolean;
}

/** The answer to POST /volumes. */
export interface AddVolumeResult {
  volume: string;
  sizeBytes: number;
  targetName: string;
}

/** The answer to POST /resize. */
export interface ResizeResult {
  volume: string;
  sizeBytes: number;
  previousSizeBytes: number;
  /** False when the volume already had that size. */
  changed: boolean;
}

/** The answer to POST /pause and /resume. */
export interface PauseResult {
  /** The pause in place after the call (null: shipping). */
  paused: ReplicationPause | null;
  /** Whether this call changed anything (false: already paused, or not paused). */
  changed: boolean;
  backlogBytes: number;
  rpoSeconds: number;
  ackedSeq: number;
  headSeq: number;
}

/** A replica's /status verified: what the primary's online verify compared and found here. */
function verifiedHere(c: ReturnType<ReplicaStore['counters']>): NonNullable<ApplianceStatus['verified']> {
  return { comparedBytes: c.verifiedBytes, mismatchedChunks: c.verifyMismatches, repairedBytes: c.repairedBytes };
}

/** The ranges of a repair due as saved; undefined (every volume) when there are none or they are not ranges. */
function savedRanges(v: unknown): VerifyRange[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const ok = (r: unknown): r is VerifyRange => {
    const x = r as VerifyRange;
    return !!x && typeof x.volume === 'string' && Number.isSafeInteger(x.offsetBytes) && x.offsetBytes >= 0 && Number.isSafeInteger(x.lengthBytes) && x.lengthBytes > 0;
  };
  return v.every(ok) ? v.map((r: VerifyRange) => ({ volume: r.volume, offsetBytes: r.offsetBytes, lengthBytes: r.lengthBytes })) : undefined;
}

