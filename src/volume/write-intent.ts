/**
 * The write-intent map of a journaled volume (as md's write-intent bitmap): the regions whose
 * image may hold a write the journal lost in a power cut.
 *
 * A write reaches the journal's segment and then the image, both in the page cache; neither is
 * flushed, and the kernel writes each back on its own schedule. A power cut can therefore leave
 * an image page whose journal record never reached the disk: the replica never gets that write.
 * The repair after an unclean stop (appliance.repairDue) compares the volumes with the replica;
 * this map bounds what it has to compare. A region is marked, durably (written and fdatasynced),
 * before the first image write into it; the mark is cleared once a checkpoint has made the
 * region's writes durable in both the image and the journal (JournalKeeper: journal synced,
 * images fsynced, after the last write into it). So every region a power cut could leave
 * different is marked in the file, whatever the kernel had written back.
 *
 * The cost: one small write and fdatasync before the first write into a region after each
 * checkpoint (every 30 s, or at an FUA write); the writes into that region wait for it, the
 * others do not. Writes into a marked region cost a comparison.
 *
 * File: `<data>/state/<volume>/write-intent.map`, MAGIC (8 bytes), the region size (u32 BE),
 * 4 bytes reserved, then one byte per region (1: marked), as many as the volume has had.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** The region size: 64 MiB (a 16 TiB volume's map is 256 KiB). */
export const WRITE_INTENT_REGION_BYTES = 64 * 1024 * 1024;
const MAGIC = Buffer.from('OFSWIM01');
const HEADER_BYTES = 16;

export interface IntentRange {
  offsetBytes: number;
  lengthBytes: number;
}

/** What the file said when it was opened: the marked regions, or why it could not say. */
export type IntentFound = { ranges: IntentRange[] } | { unknown: 'missing' | 'invalid'; reason: string };

export class WriteIntentMap {
  /** What the file should hold (written whole, then synced, one write at a time). */
  private bytes: Buffer;
  /** 1: the region's mark is in the file, synced. */
  private durable: Uint8Array;
  /** The newest record written into each region. */
  private lastSeq: Float64Array;
  /** Regions to mark with the next write, and who waits for it. */
  private pending: number[] = [];
  private waiters: { resolve(): void; reject(e: Error): void }[] = [];
  private dirty = false;
  private writing?: Promise<void>;
  private looping = false;
  private closed = false;
  /** The last write or sync failure (cleared by a success). */
  failure?: Error;
  private readonly header: Buffer;

  private constructor(
    readonly file: string,
    private readonly fh: FileHandle,
    readonly regionBytes: number,
    regions: number,
  ) {
    this.bytes = Buffer.alloc(regions);
    this.durable = new Uint8Array(regions);
    this.lastSeq = new Float64Array(regions);
    this.header = Buffer.alloc(HEADER_BYTES);
    MAGIC.copy(this.header, 0);
    this.header.writeUInt32BE(regionBytes, 8);
  }

  /**
   * Open (creating) the map of a volume of `sizeBytes`. The map starts clear, the file as it was:
   * the caller keeps what the file held (readIntentFile) where it needs it (the repair due)
   * before the first write, then calls `reset` to make the clear map durable.
   */
  static async open(file: string, sizeBytes: number, regionBytes = WRITE_INTENT_REGION_BYTES): Promise<WriteIntentMap> {
    await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    const fh = await fsp.open(file, fsc.O_RDWR | fsc.O_CREAT, 0o600);
    return new WriteIntentMap(file, fh, regionBytes, Math.max(1, Math.ceil(sizeBytes / regionBytes)));
  }

  /**
   * Write the clear map (the header, every region unmarked) over what the file held, and sync it.
   * The caller has kept what the file held first (in the repair due): a crash in between loses nothing.
   */
  async reset(): Promise<void> {
    this.bytes.fill(0);
    this.durable.fill(0);
    await this.write();
  }

  /**
   * Before an image write of `seq` into [offset, offset + length): undefined when every region
   * it touches is marked already (nothing allocated), else a promise resolved once they are
   * marked durably. Rejects when the mark could not be written: the write must not reach the image.
   */
  mark(offsetBytes: number, lengthBytes: number, seq: number): Promise<void> | undefined {
    if (lengthBytes <= 0) return undefined;
    const first = Math.floor(offsetBytes / this.regionBytes);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / this.regionBytes);
    if (last >= this.durable.length) this.extend(last + 1);
    let needed = false;
    for (let r = first; r <= last; r++) {
      if (this.lastSeq[r] < seq) this.lastSeq[r] = seq;
      if (this.durable[r] === 0) {
        needed = true;
        if (!this.pending.includes(r)) this.pending.push(r);
        this.bytes[r] = 1;
      }
    }
    if (!needed) return undefined;
    if (this.closed) return Promise.reject(new Error(`write-intent map ${this.file} is closed`));
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  /**
   * A checkpoint made every record ≤ seq durable in the images and the journal: the regions
   * written by none after it are unmarked (written without waiting; a stale mark costs only a
   * longer repair).
   */
  checkpointed(seq: number): void {
    let changed = false;
    for (let r = 0; r < this.durable.length; r++) {
      if (this.durable[r] === 1 && this.lastSeq[r] <= seq) {
        this.durable[r] = 0;
        this.bytes[r] = 0;
        changed = true;
      }
    }
    if (changed && !this.closed) {
      this.dirty = true;
      this.kick();
    }
  }

  /** The regions marked now (durably or on their way). */
  markedRanges(sizeBytes: number): IntentRange[] {
    return rangesOf(this.bytes, this.regionBytes, sizeBytes);
  }

  /** Wait for the writes under way, then close the file. The marks stay as they are. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.looping) await this.writing;
    await this.fh.close();
  }

  private extend(regions: number): void {
    const grow = <T extends Buffer | Uint8Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(regions);
      b.set(a);
      return b;
    };
    this.bytes = grow(this.bytes, (n) => Buffer.alloc(n));
    this.durable = grow(this.durable, (n) => new Uint8Array(n));
    this.lastSeq = grow(this.lastSeq, (n) => new Float64Array(n));
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    this.writing = this.writeLoop();
  }

  /** Writes until nothing is pending; the decision to stop and `looping` change together (no await between). */
  private async writeLoop(): Promise<void> {
    for (;;) {
      if (!this.pending.length && !this.dirty) {
        this.looping = false;
        return;
      }
      const marking = this.pending;
      const waiters = this.waiters;
      this.pending = [];
      this.waiters = [];
      this.dirty = false;
      try {
        await this.write();
        for (const r of marking) if (this.bytes[r] === 1) this.durable[r] = 1;
        this.failure = undefined;
        for (const w of waiters) w.resolve();
      } catch (e) {
        // Not durable: the next write into these regions tries again (the bytes stay 1; a mark
        // the file may hold without need costs only a longer repair).
        this.failure = e as Error;
        const err = new Error(`write-intent map ${this.file}: ${(e as Error).message}`, { cause: e });
        for (const w of waiters) w.reject(err);
      }
    }
  }

  private async write(): Promise<void> {
    const snapshot = Buffer.from(this.bytes);
    const { bytesWritten } = await this.fh.writev([this.header, snapshot], 0);
    if (bytesWritten !== HEADER_BYTES + snapshot.length) throw new Error(`short write (${bytesWritten} of ${HEADER_BYTES + snapshot.length} bytes)`);
    await this.fh.datasync();
  }
}

/** The marked regions of a map file, cut at `sizeBytes` (for the repair due after an unclean stop). */
export async function readIntentFile(file: string, sizeBytes = Number.MAX_SAFE_INTEGER): Promise<IntentFound> {
  let data: Buffer;
  try {
    data = await fsp.readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { unknown: 'missing', reason: `${file} does not exist` };
    return { unknown: 'invalid', reason: `${file}: ${(e as Error).message}` };
  }
  if (data.length < HEADER_BYTES || !data.subarray(0, MAGIC.length).equals(MAGIC)) return { unknown: 'invalid', reason: `${file} is not a write-intent map` };
  const regionBytes = data.readUInt32BE(8);
  if (regionBytes === 0 || regionBytes % 512 !== 0) return { unknown: 'invalid', reason: `${file}: region size ${regionBytes}` };
  const bytes = data.subarray(HEADER_BYTES);
  for (const b of bytes) if (b > 1) return { unknown: 'invalid', reason: `${file}: a region byte is ${b}` };
  return { ranges: rangesOf(bytes, regionBytes, sizeBytes) };
}

/** Marked regions as ranges (adjacent ones joined), clipped to `sizeBytes`. */
function rangesOf(bytes: Uint8Array, regionBytes: number, sizeBytes: number): IntentRange[] {
  const out: IntentRange[] = [];
  for (let r = 0; r < bytes.length; r++) {
    if (bytes[r] !== 1) continue;
    const offsetBytes = r * regionBytes;
    if (offsetBytes >= sizeBytes) break;
    const lengthBytes = Math.min(regionBytes, sizeBytes - offsetBytes);
    const prev = out[out.length - 1];
    if (prev && prev.offsetBytes + prev.lengthBytes === offsetBytes) prev.lengthBytes += lengthBytes;
    else out.push({ offsetBytes, lengthBytes });
  }
  return out;
}
