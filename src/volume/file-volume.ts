/**
 * A volume backed by a sparse file: `<dir>/<name>.img` plus `<dir>/<name>.json` holding its
 * identity (uuid, size, block size). Reads and writes are positional (pread/pwrite on the
 * libuv pool); flush is fdatasync. Thin when the blockio addon is built: unmap punches holes
 * (reads back zeros, LBPRZ=1) and allocation comes from SEEK_DATA/SEEK_HOLE; otherwise thick.
 * A volume grows online (never shrinks): the metadata first names the old and the new size, then
 * the file is extended, then the metadata holds the new size alone, so a crash in between is
 * finished at the next open and never mistaken for a damaged image.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as fsc, writeSync, writevSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { acquireBuffer } from '../common/buffer-pool';
import { iovFrom } from '../common/bytes';
import { deferred } from '../common/deferred';
import { blockio, punchHole } from './blockio';
import { VolumeError, VolumeErrorCode } from './errors';
import type { AllocationExtent, Volume, WriteOptions } from './volume';

/** Not ending in .json or .tmp: a volume's state directory sits beside the site's own state files. */
export const VOLUME_NAME_RE = /^(?!.*\.(?:json|tmp)$)[a-z0-9][a-z0-9._-]{0,62}$/;
const META_VERSION = 1;

interface VolumeMeta {
  version: number;
  name: string;
  uuid: string;
  sizeBytes: number;
  blockSize: number;
  createdAt: string;
  /** Set only while a grow is under way: the size before it (an image of this size is completed at open). */
  growingFromBytes?: number;
  grownAt?: string;
}

export interface OpenVolumeOptions {
  dir: string;
  name: string;
  /** Required to create; when the volume exists, must match (or be undefined). */
  sizeBytes?: number;
  blockSize?: number;
  readOnly?: boolean;
  /** Create the volume if missing (default true when sizeBytes is given). */
  create?: boolean;
}

/** An inline image write slower than this (per MiB written, for writes over a MiB) means the disk is pushing back... */
const INLINE_SLOW_MS = 10;
/** ...and the volume's writes go through the thread pool for this long. */
const INLINE_BACKOFF_MS = 1000;

/**
 * A combined write of several MiB takes more than 10 ms at page-cache speed: only a rate below
 * 100 MiB/s says the disk pushes back (sending the volume to the pool for a second on a merely
 * big write cost the next second half its speed).
 */
function tooSlow(tookMs: number, bytes: number): boolean {
  return tookMs > INLINE_SLOW_MS * Math.max(1, bytes / (1024 * 1024));
}

export class FileVolume implements Volume {
  readonly thin = blockio !== undefined;
  private closed = false;
  /** performance.now() from which writes may go inline again (see pwriteAll). */
  private inlineAfter = 0;
  /** RWF_NOWAIT reads / writes, until the file system says it never offers them. */
  private readNowait = blockio !== undefined;
  private writeNowait = blockio !== undefined;
  /** writeCombined's runs of back-to-back writes, written at the end of the microtask round. */
  private runs: { start: number; end: number; iov: Buffer[]; done: Promise<void>; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private runsScheduled = false;

  private constructor(
    readonly name: string,
    private size: number,
    readonly blockSize: number,
    readonly uuid: Buffer,
    public readOnly: boolean,
    private readonly fh: FileHandle,
    readonly imagePath: string,
    private readonly metaPath: string,
    private meta: VolumeMeta,
  ) {}

  get sizeBytes(): number {
    return this.size;
  }

  /**
   * Grow to `sizeBytes` (a larger multiple of the block size), online: reads and writes go on;
   * the new blocks read as zeros. Durable when it returns. Refused for a smaller size or a
   * read-only volume; the same size changes nothing (returns false).
   */
  async grow(sizeBytes: number): Promise<boolean> {
    this.checkWritable();
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes % this.blockSize !== 0) {
      throw new VolumeError(VolumeErrorCode.SizeMismatch, `volume size must be a multiple of ${this.blockSize} bytes, got ${sizeBytes}`);
    }
    if (sizeBytes < this.size) throw new VolumeError(VolumeErrorCode.Shrink, `volume '${this.name}' is ${this.size} bytes: it can grow, never shrink (to ${sizeBytes} bytes would lose the blocks past it)`);
    if (sizeBytes === this.size) return false;
    const from = this.size;
    await writeMeta(this.metaPath, { ...this.meta, sizeBytes, growingFromBytes: from });
    await this.fh.truncate(sizeBytes);
    await this.fh.sync();
    const meta: VolumeMeta = { ...this.meta, sizeBytes, grownAt: new Date().toISOString() };
    delete meta.growingFromBytes;
    await writeMeta(this.metaPath, meta);
    this.meta = meta;
    this.size = sizeBytes;
    return true;
  }

  static imagePath(dir: string, name: string): string {
    return path.join(dir, `${name}.img`);
  }

  /** Names of the volumes that exist in `dir`. */
  static async list(dir: string): Promise<string[]> {
    let entries: string[];
    try {
      entries = await fsp.readdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    return entries.filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).filter((n) => VOLUME_NAME_RE.test(n)).sort();
  }

  static async open(opts: OpenVolumeOptions): Promise<FileVolume> {
    const { dir, name } = opts;
    if (!VOLUME_NAME_RE.test(name)) {
      throw new VolumeError(VolumeErrorCode.BadName, `invalid volume name '${name}': use 1-63 characters a-z, 0-9, '.', '_', '-', starting with a letter or digit, not ending in .json or .tmp`);
    }
    const blockSize = opts.blockSize ?? 512;
    const metaPath = path.join(dir, `${name}.json`);
    const imagePath = FileVolume.imagePath(dir, name);
    let meta: VolumeMeta | undefined;
    try {
      meta = JSON.parse(await fsp.readFile(metaPath, 'utf8')) as VolumeMeta;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new VolumeError(VolumeErrorCode.Io, `cannot read volume metadata ${metaPath}: ${(e as Error).message}`, { cause: e });
      }
    }
    if (meta) {
      if (opts.sizeBytes !== undefined && opts.sizeBytes !== meta.sizeBytes) {
        throw new VolumeError(VolumeErrorCode.SizeMismatch, `volume '${name}' exists with size ${meta.sizeBytes} bytes, not the requested ${opts.sizeBytes} bytes (open it without a size, then grow it)`);
      }
    } else {
      if (opts.sizeBytes === undefined || opts.create === false) {
        throw new VolumeError(VolumeErrorCode.Io, `volume '${name}' does not exist in ${dir}`);
      }
      if (opts.sizeBytes <= 0 || opts.sizeBytes % blockSize !== 0) {
        throw new VolumeError(VolumeErrorCode.SizeMismatch, `volume size must be a positive multiple of ${blockSize} bytes, got ${opts.sizeBytes}`);
      }
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const fh = await fsp.open(imagePath, fsc.O_RDWR | fsc.O_CREAT, 0o600);
      try {
        await fh.truncate(opts.sizeBytes);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      meta = {
        version: META_VERSION,
        name,
        uuid: randomBytes(16).toString('hex'),
        sizeBytes: opts.sizeBytes,
        blockSize,
        createdAt: new Date().toISOString(),
      };
      await writeMeta(metaPath, meta);
    }
    const fh = await fsp.open(imagePath, opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR);
    let st = await fh.stat();
    if (meta.growingFromBytes !== undefined && (st.size === meta.growingFromBytes || st.size === meta.sizeBytes)) {
      // A grow a crash interrupted: finished now (the new blocks are zeros either way).
      if (opts.readOnly) {
        await fh.close();
        throw new VolumeError(VolumeErrorCode.SizeMismatch, `volume '${name}' was growing to ${meta.sizeBytes} bytes when it stopped: open it writable once to finish`);
      }
      await fh.truncate(meta.sizeBytes);
      await fh.sync();
      delete meta.growingFromBytes;
      await writeMeta(metaPath, meta);
      st = await fh.stat();
    }
    if (st.size !== meta.sizeBytes) {
      await fh.close();
      throw new VolumeError(VolumeErrorCode.SizeMismatch, `image ${imagePath} is ${st.size} bytes but its metadata says ${meta.sizeBytes}`);
    }
    return new FileVolume(name, meta.sizeBytes, meta.blockSize, Buffer.from(meta.uuid, 'hex'), opts.readOnly ?? false, fh, imagePath, metaPath, meta);
  }

  private check(offsetBytes: number, lengthBytes: number): void {
    if (offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > this.sizeBytes) {
      throw new VolumeError(VolumeErrorCode.OutOfRange, `range ${offsetBytes}+${lengthBytes} outside volume '${this.name}' of ${this.sizeBytes} bytes`);
    }
  }

  private checkWritable(): void {
    if (this.readOnly) throw new VolumeError(VolumeErrorCode.ReadOnly, `volume '${this.name}' is read-only`);
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.check(offsetBytes, lengthBytes);
    const buf = acquireBuffer(lengthBytes);
    let done = 0;
    // Page-cache hits are served inline; anything that would wait for the disk goes to the pool.
    if (this.readNowait) {
      const n = blockio!.preadNowait(this.fh.fd, buf, offsetBytes);
      if (n === lengthBytes) return buf;
      if (n > 0) done = n;
      else if (n === -2) this.readNowait = false;
    }
    while (done < lengthBytes) {
      const { bytesRead } = await this.fh.read(buf, done, lengthBytes - done, offsetBytes + done);
      if (bytesRead === 0) {
        buf.fill(0, done);
        break;
      }
      done += bytesRead;
    }
    return buf;
  }

  async write(offsetBytes: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    this.check(offsetBytes, data.length);
    await this.pwriteAll(data, offsetBytes);
    if (opts?.fua) await this.fh.datasync();
  }

  /** No recent write took too long (see pwriteAll): write inline. Reads the clock only while backing off. */
  private inlineNow(): boolean {
    if (this.inlineAfter === 0) return true;
    if (performance.now() < this.inlineAfter) return false;
    this.inlineAfter = 0;
    return true;
  }

  private async pwriteAll(data: Buffer, offsetBytes: number): Promise<void> {
    let done = 0;
    if (this.writeNowait) {
      const n = blockio!.pwriteNowait(this.fh.fd, data, offsetBytes);
      if (n === data.length) return;
      if (n > 0) done = n;
      else if (n === -2) this.writeNowait = false;
    }
    try {
      if (!this.writeNowait && this.inlineNow()) {
        // Where RWF_NOWAIT is not offered for buffered writes (ext4 here), write inline anyway:
        // a page-cache copy costs less than the thread-pool round trip, which bounded a queue
        // depth's worth of writes to one per event-loop turn. A write that took long (the disk
        // pushing back: dirty-page throttling, allocation reads) sends this volume's writes to
        // the pool for a while, so the event loop does not wait on the disk.
        const started = performance.now();
        while (done < data.length) done += writeSync(this.fh.fd, data, done, data.length - done, offsetBytes + done);
        const took = performance.now() - started;
        if (tooSlow(took, data.length)) this.inlineAfter = started + took + INLINE_BACKOFF_MS;
        return;
      }
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, offsetBytes + done);
        done += bytesWritten;
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new VolumeError(VolumeErrorCode.NoSpace, `volume '${this.name}': no space left on the device`);
      throw e;
    }
  }

  /**
   * `write`, for callers that issue writes in bursts (the journaled volume, when a group commit
   * answers a batch of records at once): writes made in the same microtask round to back-to-back
   * ranges reach the image as one pwritev, in call order. Where writes go to the thread pool
   * (see pwriteAll), this is just `write`.
   */
  writeCombined(offsetBytes: number, data: Buffer): Promise<void> {
    this.checkWritable();
    this.check(offsetBytes, data.length);
    if (this.writeNowait || !this.inlineNow()) return this.pwriteAll(data, offsetBytes);
    let run = this.runs[this.runs.length - 1];
    if (!run || run.end !== offsetBytes || run.iov.length >= 1024) {
      const { promise: done, resolve, reject } = deferred();
      this.runs.push((run = { start: offsetBytes, end: offsetBytes, iov: [], done, resolve, reject }));
    }
    run.iov.push(data);
    run.end += data.length;
    if (!this.runsScheduled) {
      this.runsScheduled = true;
      queueMicrotask(() => this.writeRuns());
    }
    return run.done;
  }

  private writeRuns(): void {
    this.runsScheduled = false;
    const runs = this.runs;
    this.runs = [];
    for (const run of runs) {
      const length = run.end - run.start;
      let done = 0;
      try {
        const started = performance.now();
        while (done < length) done += writevSync(this.fh.fd, done ? iovFrom(run.iov, done) : run.iov, run.start + done);
        const took = performance.now() - started;
        if (tooSlow(took, length)) this.inlineAfter = started + took + INLINE_BACKOFF_MS;
        run.resolve();
      } catch (e) {
        run.reject((e as NodeJS.ErrnoException).code === 'ENOSPC' ? new VolumeError(VolumeErrorCode.NoSpace, `volume '${this.name}': no space left on the device`) : e);
      }
    }
  }

  async writeSame(offsetBytes: number, lengthBytes: number, pattern: Buffer, opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    this.check(offsetBytes, lengthBytes);
    const chunkBytes = Math.min(lengthBytes, 1 << 20);
    const chunk = Buffer.allocUnsafe(chunkBytes - (chunkBytes % pattern.length));
    for (let o = 0; o < chunk.length; o += pattern.length) pattern.copy(chunk, o);
    for (let o = 0; o < lengthBytes; o += chunk.length) {
      const n = Math.min(chunk.length, lengthBytes - o);
      await this.pwriteAll(chunk.subarray(0, n), offsetBytes + o);
    }
    if (opts?.fua) await this.fh.datasync();
  }

  async unmap(offsetBytes: number, lengthBytes: number, opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    this.check(offsetBytes, lengthBytes);
    if (lengthBytes === 0) return;
    if (blockio) await punchHole(blockio, this.fh.fd, offsetBytes, lengthBytes);
    else await this.writeSame(offsetBytes, lengthBytes, Buffer.alloc(this.blockSize));
    if (opts?.fua) await this.fh.datasync();
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.fh.datasync();
  }

  async allocation(offsetBytes: number, lengthBytes: number): Promise<AllocationExtent[]> {
    this.check(offsetBytes, lengthBytes);
    if (!blockio) return [{ offsetBytes, lengthBytes, mapped: true }];
    const end = offsetBytes + lengthBytes;
    const extents: AllocationExtent[] = [];
    let pos = offsetBytes;
    while (pos < end) {
      const data = blockio.seekData(this.fh.fd, pos);
      const mapped = data === pos;
      let next = mapped ? blockio.seekHole(this.fh.fd, pos) : data;
      if (next < 0 || next > end) next = end;
      // Holes are found at file-system block granularity; report whole logical blocks.
      next = Math.min(end, Math.ceil(next / this.blockSize) * this.blockSize);
      if (next <= pos) next = Math.min(end, pos + this.blockSize);
      extents.push({ offsetBytes: pos, lengthBytes: next - pos, mapped });
      pos = next;
    }
    return extents;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.readOnly) await this.fh.datasync().catch(() => undefined);
    await this.fh.close();
  }
}

/** Write a volume's metadata whole: temporary file, synced, renamed over the old one, directory synced. */
async function writeMeta(metaPath: string, meta: VolumeMeta): Promise<void> {
  const tmp = `${metaPath}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(meta, null, 2) + '\n', { mode: 0o600 });
  const tfh = await fsp.open(tmp, 'r');
  await tfh.datasync();
  await tfh.close();
  await fsp.rename(tmp, metaPath);
  const dfh = await fsp.open(path.dirname(metaPath), 'r');
  await dfh.sync().catch(() => undefined);
  await dfh.close();
}
