/**
 * One site: opens the data directory and volumes, builds a SCSI target per volume, serves
 * them over iSCSI, and shuts everything down in order. The HTTP/metrics side lives in ops/.
 */
import { IscsiServer } from '../iscsi/server';
import type { TargetDirectory, TargetEntry } from '../iscsi/targets';
import { createScsiTarget, naaDesignator } from '../scsi';
import type { Logger } from '../common/logger';
import { formatHostPort, type HostPort } from '../common/units';
import { Journal } from '../journal/wal';
import { FileVolume } from '../volume/file-volume';
import { ImageTracker, JournaledVolume, JournalKeeper, recoverImages } from '../volume/journaled';
import type { Volume } from '../volume/volume';
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
}

/** Observers the ops layer attaches (metrics), so lower layers never import prom-client. */
export interface ApplianceHooks {
  onCommandComplete?: (volume: string, op: string, status: number, durationNs: bigint) => void;
}

export class Appliance {
  private readonly served = new Map<string, ServedVolume>();
  private journal?: Journal;
  private keeper?: JournalKeeper;
  private readonly tracker = new ImageTracker();
  private iscsi?: IscsiServer;
  private identity?: DataDirIdentity;
  private iscsiAddress?: HostPort;
  private readonly startedAt = new Date();
  private stopping?: Promise<void>;
  readonly dataDir: DataDir;

  private constructor(readonly config: ApplianceConfig, readonly logger: Logger, private readonly hooks: ApplianceHooks = {}) {
    this.dataDir = new DataDir(config.dataDir);
  }

  static async start(config: ApplianceConfig, logger: Logger, hooks: ApplianceHooks = {}): Promise<Appliance> {
    const app = new Appliance(config, logger, hooks);
    try {
      await app.open();
    } catch (e) {
      await app.stop().catch(() => undefined);
      throw e;
    }
    return app;
  }

  private async open(): Promise<void> {
    const { config, logger } = this;
    this.identity = await this.dataDir.init();
    await this.dataDir.lock();
    const existing = await FileVolume.list(this.dataDir.volumesDir);
    const wanted: VolumeConfig[] = config.volumes.length ? config.volumes : existing.map((name) => ({ name }));
    const images = new Map<string, FileVolume>();
    for (const v of wanted) {
      images.set(v.name, await FileVolume.open({ dir: this.dataDir.volumesDir, name: v.name, sizeBytes: v.sizeBytes, readOnly: v.readOnly || config.role === 'replica' }));
    }
    const journaled = config.journal.enabled && config.role === 'primary';
    if (journaled) {
      const journal = (this.journal = await Journal.open({
        dir: this.dataDir.journalDir,
        logger: logger.child({ layer: 'journal' }),
        maxBytes: config.journal.maxBytes,
        retainMs: config.journal.retainMs,
        retainBytes: config.journal.retainBytes,
        ownsRetention: true,
      }));
      for (const name of images.keys()) await journal.registerVolume(name);
      const writable = new Map([...images].filter(([, img]) => !img.readOnly));
      const report = await recoverImages(journal, writable, logger);
      if (report.records > 0) {
        logger.warn({ ...report }, 'unclean stop detected: journal tail replayed onto the images');
      }
      logger.info({ headSeq: journal.headSeq(), oldestSeq: journal.oldestSeq(), records: journal.stats().records }, 'journal open');
    } else if (config.role === 'primary') {
      logger.warn('journal disabled (--no-journal): writes go straight to the images; no replication or point-in-time replay');
    }
    for (const v of wanted) {
      const image = images.get(v.name)!;
      const volume: Volume = this.journal && !image.readOnly ? new JournaledVolume(image, this.journal, this.tracker) : image;
      const name = targetName(config.targetPrefix, v.name);
      const target = await createScsiTarget({
        targetName: name,
        luns: [{ lun: 0, volume }],
        stateDir: this.dataDir.stateDir(v.name),
        resolveByDesignator: (naa: Buffer) => this.volumeByDesignator(naa),
        logger: logger.child({ volume: v.name }),
        onCommandComplete: this.hooks.onCommandComplete && ((op: string, status: number, ns: bigint) => this.hooks.onCommandComplete!(v.name, op, status, ns)),
      });
      const entry: TargetEntry = { name, alias: v.name, auth: toTargetAuth(config.targets[v.name] ?? config.auth), scsi: target };
      this.served.set(v.name, { volume, image, target, entry });
      logger.info({ volume: v.name, sizeBytes: image.sizeBytes, target: name, created: !existing.includes(v.name) }, 'volume ready');
    }
    if (this.journal) {
      const journal = this.journal;
      this.keeper = new JournalKeeper(journal, this.tracker, () => [...this.served.values()].map((s) => s.volume).filter((v): v is JournaledVolume => v instanceof JournaledVolume), logger.child({ layer: 'journal' }));
    }
    const served = this.served;
    const directory: TargetDirectory = {
      targets: () => [...served.values()].map((s) => s.entry),
      lookup: (n) => [...served.values()].find((s) => s.entry.name === n)?.entry,
    };
    this.iscsi = new IscsiServer({ directory, logger: logger.child({ layer: 'iscsi' }), nopIntervalMs: config.nop.intervalMs, nopTimeoutMs: config.nop.timeoutMs });
    this.iscsiAddress = await this.iscsi.listen(config.iscsi.host, config.iscsi.port);
    logger.info({ iscsi: formatHostPort(this.iscsiAddress), role: config.role, siteId: this.identity.siteId }, 'appliance serving');
  }

  private volumeByDesignator(naa: Buffer): Volume | undefined {
    for (const s of this.served.values()) if (naaDesignator(s.volume).equals(naa)) return s.volume;
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
      })),
      headSeq: this.journal?.headSeq() ?? 0,
      journal: this.journal && this.journalStatus(this.journal),
    };
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

  /** Stop serving: sessions ended, volumes synced and closed, lock released. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.iscsi) await this.iscsi.close().catch((e: unknown) => this.logger.error({ err: e }, 'iscsi close failed'));
      for (const s of this.served.values()) await s.target.close().catch(() => undefined);
      if (this.keeper) await this.keeper.stop().catch((e: unknown) => this.logger.error({ err: e }, 'final journal checkpoint failed'));
      for (const [name, s] of this.served) {
        await s.target.close().catch((e: unknown) => this.logger.error({ err: e, volume: name }, 'scsi target close failed'));
        await s.volume.close().catch((e: unknown) => this.logger.error({ err: e, volume: name }, 'volume close failed'));
      }
      if (this.journal) await this.journal.close().catch((e: unknown) => this.logger.error({ err: e }, 'journal close failed'));
      await this.dataDir.unlock();
      this.logger.info('appliance stopped');
    })();
    return this.stopping;
  }
}

function toTargetAuth(a: TargetAuthConfig): TargetEntry['auth'] {
  return { chap: a.chap, mutualChap: a.mutualChap, allowedInitiators: a.allowedInitiators };
}
