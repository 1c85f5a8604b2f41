/**
 * The data directory of one site: identity file, pid lock, and where each layer keeps its files.
 *   offsite.json   {format:'offsite-data', version, siteId, createdAt}
 *   offsite.pid    pid of the running appliance (stale files are taken over)
 *   volumes/       image files (FileVolume)
 *   journal/       LevelDB write-ahead journal
 *   state/<vol>/   per-volume SCSI state (persistent reservations)
 */
import { randomUUID } from 'node:crypto';
import { constants as fsc, promises as fsp } from 'node:fs';
import path from 'node:path';
import { OffsiteError } from '../common/errors';
import { syncPath } from '../common/json-file';
import { pidFileOwner, removeOwnPidFile } from '../common/process';

export const DATA_FORMAT = 'offsite-data';
export const DATA_VERSION = 1;

export class DataDirError extends OffsiteError {}

export interface DataDirIdentity {
  format: string;
  version: number;
  siteId: string;
  createdAt: string;
}

export class DataDir {
  constructor(readonly root: string) {}
  get identityPath(): string { return path.join(this.root, 'offsite.json'); }
  get pidPath(): string { return path.join(this.root, 'offsite.pid'); }
  get volumesDir(): string { return path.join(this.root, 'volumes'); }
  get journalDir(): string { return path.join(this.root, 'journal'); }
  stateDir(volume: string): string { return path.join(this.root, 'state', volume); }

  /** Create (or validate) the directory and its identity. */
  async init(): Promise<DataDirIdentity> {
    try {
      await makeDirs(this.root);
      await fsp.access(this.root, fsc.W_OK | fsc.R_OK | fsc.X_OK);
    } catch (e) {
      throw new DataDirError('DATA_DIR_UNUSABLE', `data directory ${this.root} is not usable: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const existing = await this.readIdentity().catch((e: unknown) => {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    });
    if (existing) return existing;
    const entries = await fsp.readdir(this.root);
    if (entries.some((e) => !e.startsWith('.'))) {
      throw new DataDirError('DATA_DIR_FOREIGN', `data directory ${this.root} is not empty and is not an offsite data directory (no offsite.json)`);
    }
    const identity: DataDirIdentity = { format: DATA_FORMAT, version: DATA_VERSION, siteId: randomUUID(), createdAt: new Date().toISOString() };
    const tmp = `${this.identityPath}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(identity, null, 2) + '\n', { mode: 0o600 });
    await fsp.rename(tmp, this.identityPath);
    await fsp.mkdir(this.volumesDir, { recursive: true, mode: 0o700 });
    return identity;
  }

  /**
   * The directory's permission bits when group or others have any (0 when owner-only). It holds
   * every byte written to the volumes (images, journal segments): a directory made before
   * offsite ran, or chmodded since, may let other local users read them.
   */
  async openToOthers(): Promise<number> {
    const mode = (await fsp.stat(this.root)).mode & 0o777;
    return mode & 0o077 ? mode : 0;
  }

  async readIdentity(): Promise<DataDirIdentity> {
    const identity = JSON.parse(await fsp.readFile(this.identityPath, 'utf8')) as DataDirIdentity;
    if (identity.format !== DATA_FORMAT) {
      throw new DataDirError('DATA_DIR_FOREIGN', `${this.identityPath} is not an offsite data directory identity`);
    }
    if (identity.version > DATA_VERSION) {
      throw new DataDirError('DATA_DIR_VERSION', `${this.root} has data format version ${identity.version}; this offsite understands up to ${DATA_VERSION}`);
    }
    return identity;
  }

  /** The pid of a live appliance owning this directory, if any. */
  runningPid(): Promise<number | undefined> {
    return pidFileOwner(this.pidPath);
  }

  /**
   * Take the pid lock; refuses while another live appliance holds it. Says whether a pid file was
   * left behind: the last appliance here did not stop cleanly (killed, crashed, or the power went),
   * since a clean stop removes the file once everything is synced. The file is made durable, so a
   * power cut at any time after the start leaves it for the next start to see.
   */
  async lock(): Promise<{ uncleanStop: boolean }> {
    const other = await this.runningPid();
    if (other !== undefined) {
      throw new DataDirError('DATA_DIR_LOCKED', `data directory ${this.root} is in use by a running appliance (pid ${other})`);
    }
    const left = await fsp.stat(this.pidPath).then(
      () => true,
      () => false,
    );
    const fh = await fsp.open(this.pidPath, 'w', 0o600);
    try {
      await fh.writeFile(`${process.pid}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await syncPath(this.root);
    return { uncleanStop: left };
  }

  unlock(): Promise<void> {
    return removeOwnPidFile(this.pidPath);
  }
}

/**
 * mkdir -p, one level at a time, the last one owner-only. Not fs.mkdir({recursive}): on a
 * file system that answers ENOENT to creating a directory (procfs: `--data /proc/x`), Node's
 * recursive mkdir retries forever at full CPU. Here an ENOENT for a directory whose parent
 * exists is final.
 */
async function makeDirs(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const st = await fsp.stat(d).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (st) {
      if (!st.isDirectory()) throw Object.assign(new Error(`${d} is not a directory`), { code: 'ENOTDIR' });
      break;
    }
    missing.unshift(d);
    if (path.dirname(d) === d) break;
  }
  for (const [i, d] of missing.entries()) {
    await fsp.mkdir(d, { mode: i === missing.length - 1 ? 0o700 : 0o777 }).catch((e: NodeJS.ErrnoException) => {
      // Made meanwhile by someone else: fine, as long as it is a directory (checked by the caller's access()).
      if (e.code !== 'EEXIST') throw e;
    });
  }
}
