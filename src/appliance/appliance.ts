/**
 * One site: opens the data directory and volumes, builds a SCSI target per volume, serves
 * them over iSCSI, and shuts everything down in order. The HTTP/metrics side lives in ops/.
 */
import { IscsiServer } from '../iscsi/server';
import type { TargetDirectory, TargetEntry } from '../iscsi/targets';
import { createScsiTarget, naaDesignator } from '../scsi';
import type { Logger } from '../common/logger';
import { formatHostPort, type HostPort } from '../common/units';
import { FileVolume } from '../volume/file-volume';
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
}

/** Observers the ops layer attaches (metrics), so lower layers never import prom-client. */
export interface ApplianceHooks {
  onCommandComplete?: (volume: string, op: string, status: number, durationNs: bigint) => void;
}

export class Appliance {
  private readonly served = new Map<string, ServedVolume>();
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
    for (const v of wanted) {
      const image = await FileVolume.open({ dir: this.dataDir.volumesDir, name: v.name, sizeBytes: v.sizeBytes, readOnly: v.readOnly || config.role === 'replica' });
      const volume: Volume = image;
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
    };
  }

  /** Stop serving: sessions ended, volumes synced and closed, lock released. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.iscsi) await this.iscsi.close().catch((e: unknown) => this.logger.error({ err: e }, 'iscsi close failed'));
      for (const [name, s] of this.served) {
        await s.target.close().catch((e: unknown) => this.logger.error({ err: e, volume: name }, 'scsi target close failed'));
        await s.volume.close().catch((e: unknown) => this.logger.error({ err: e, volume: name }, 'volume close failed'));
      }
      await this.dataDir.unlock();
      this.logger.info('appliance stopped');
    })();
    return this.stopping;
  }
}

function toTargetAuth(a: TargetAuthConfig): TargetEntry['auth'] {
  return { chap: a.chap, mutualChap: a.mutualChap, allowedInitiators: a.allowedInitiators };
}
