/**
 * The write-ahead journal: one LevelDB database under `<data>/journal`, one global sequence
 * across every volume of the appliance (a consistency group).
 *
 * Layout (all keys start with a one-byte kind):
 *   'r' seq(8)  → entries of consecutive records, the last of them `seq`: each entry is
 *       the record's key, 'r' seq(8) vol(2) op(1) offset(8) length(8) time(8), then where it is,
 *       segment(4) position(8) dataLength(4). Up to INDEX_GROUP records share one LevelDB entry:
 *       one put per record cost more main-thread time than the rest of the index together.
 *       (A key of the full key's length is one record, as written before entries were grouped.)
 *       LevelDB holds the ordered index of records; the records themselves (a header with the
 *       key, the id of the file and a CRC32C, then the data: a write's bytes, a WRITE SAME
 *       block) are appended to segment files `<journal>/segments/<n>.seg`. LevelDB copying
 *       128 KiB values through its log, memtable and compactions halved write throughput
 *       (≈270 MB/s here); a value log costs one page-cache copy. Segments are deleted whole (or
 *       kept as spares for reuse) once every record in them is trimmed.
 *   'm' 'volumes'     → JSON list of volume names (index = vol field); put synced, before any
 *       record of a new volume
 *   'm' 'checkpoint'  → JSON { imageSeq, droppedSeq? }: every record ≤ imageSeq is durable in
 *       the images; droppedSeq, the newest record trimmed while it was only in their page cache
 *   'm' 'base'        → JSON { seq, timeMs } of the point-in-time base images, or absent (the
 *       empty volumes before seq 1, trusted only while nothing was trimmed), or seq -1: no base
 *       (history restarts with a rebase)
 *   'm' 'synced'      → seq(8): the synced point. Every record ≤ it was fdatasynced in its segment,
 *       so its writer may have been told it is durable: a start that finds one of them corrupt
 *       refuses (JOURNAL_DURABLE_RECORD_CORRUPT) rather than cut it. Put with the index batches
 *       and checkpoints (no write of its own), so it may lag the truth, never lead it; lowered
 *       (synced) before a cut or a reset zeroes or drops records.
 *   'm' 'fold'        → JSON { toSeq }: a fold into the base images through toSeq is under way;
 *       the images may hold any mix of the states from the base's seq to toSeq until it is done
 *   'g' to(8)         → firstMissing(8): a replica's coalesced batch ending at `to`; the points
 *       firstMissing..to-1 are states the primary never had, which replay refuses
 *   'k' name          → JSON { id, seq, timeMs }: a bookmark (offsite bookmark, bookmarks.ts)
 *
 * Appending: `append` assigns the sequence number (call order is journal order); the records
 * appended in one turn of the event loop are written to their segment together, with one writev
 * (group commit), and their writes are acknowledged once it returns: a record in the page cache
 * survives a crash of the process. Nothing waits for LevelDB: index entries follow in the background,
 * one `db.batch()` at a time carrying everything queued meanwhile; a start after a crash rebuilds
 * the entries LevelDB never got from the segments (SegmentStore.scan). Durability (FUA,
 * SYNCHRONIZE CACHE) is one fdatasync of the segments at a time, covering everything before it.
 *
 * Retention and point in time: records are trimmed once they are in the images (checkpoint)
 * and, when configured, acknowledged by the replica and older than the history window. On a
 * journal whose keeper reports what the images hold (`inImages`), records no writer was promised
 * durable (no FUA) need not wait for the images' fsync: in their page cache they survive a
 * crash of the process, and a power loss may lose them as it may lose any write not flushed
 * (the volumes advertise a volatile write cache). Only FUA writes and a flush need the disk, and
 * a flush fsyncs the images itself. Without this, every record was written to the disk twice
 * (image and journal) within a second of its write, and a burst outran the spare segments. With a
 * history window, trimmed records are first applied to per-volume base images
 * (`<journal>/base/<vol>.img`), so base + retained records reproduce every retained moment.
 * Without one, the retained window is just the latest state. A size cap never stalls writes:
 * past it, trimming ignores the history window (the oldest history is folded into the base).
 */
import { closeSync, fdatasync, fdatasyncSync, openSync, readSync, readdirSync, renameSync, rmSync, unlink, unlinkSync, writeSync } from 'node:fs';
import { mkdir, open, readdir, rm, statfs, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Level } from 'level';
import { acquireBuffer, releaseBuffer, retainBuffer } from '../common/buffer-pool';
import { monoOfWall, wallToMonoOffset } from '../common/clock';
import { deferred } from '../common/deferred';
import type { Logger } from '../common/logger';
import { JournalError, JournalErrorCode } from './wal-errors';
import { RecentRecords } from './recent';
import { RecordSizes } from './record-sizes';
import { MAX_BATCH_RECORDS, recordChecksum, writeRecords, type SealLayout } from './segment-write';

export type RecordOp = 'write' | 'writeSame' | 'unmap';
const OP_CODES: Record<RecordOp, number> = { write: 0, writeSame: 1, unmap: 2 };
const OPS: RecordOp[] = ['write', 'writeSame', 'unmap'];

export interface JournalRecord {
  seq: number;
  timeMs: number;
  volume: string;
  op: RecordOp;
  offsetBytes: number;
  lengthBytes: number;
  /** write: the data; writeSame: one block; unmap: empty. */
  data: Buffer;
}

export interface JournalOptions {
  dir: string;
  logger?: Logger;
  /** Size cap: past it, history is folded into the base regardless of the window. */
  maxBytes?: number;
  /** History kept for point-in-time replay. */
  retainMs?: number;
  retainBytes?: number;
  /** Keep records until the replica acknowledges them. */
  replicated?: boolean;
  /** Keep the newest records in memory for readAfter (a primary's shipper); default: when `replicated`. */
  cacheRecent?: boolean;
  /**
   * The appliance states its retention (persisted, so tools opening a stopped journal know
   * what history exists); tools leave this unset and use what was persisted.
   */
  ownsRetention?: boolean;
  /**
   * A tool reading a stopped appliance's journal (replay, journal inspect, seed): records are
   * checked as at any open, but a bad one is reported (JOURNAL_CORRUPT, or
   * JOURNAL_DURABLE_RECORD_CORRUPT) instead of cut, and the synced point is left as it is.
   */
  inspectOnly?: boolean;
}

/** The retained records of one stretch of time (`offsite history`). */
export interface HistoryBucket {
  startMs: number;
  firstSeq: number;
  lastSeq: number;
  records: number;
  /** Data bytes journaled (a write's bytes, a WRITE SAME's one block, nothing for UNMAP). */
  bytes: number;
  perVolume: Record<string, number>;
}

export interface JournalStats {
  headSeq: number;
  oldestSeq: number;
  records: number;
  bytes: number;
  perVolume: Record<string, { records: number; bytes: number }>;
  appends: number;
  /** Group commits: segment writes, each for the records appended in one turn of the event loop. */
  batches: number;
  /** Sum of batch sizes, for the mean group-commit size. */
  batchedRecords: number;
  syncs: number;
  trimmed: number;
  /** Records folded into the base by the size cap before their history window ended. */
  folded: number;
  /** Of those, records the replica had not acknowledged (it then needs a delta sync). */
  foldedUnshipped: number;
  /** Records cut at a start as a torn tail: bad, after the synced point, so never acknowledged as durable. */
  tornRecordsDropped: number;
  imageSeq: number;
  replicaAckedSeq: number;
  baseSeq?: number;
  baseTimeMs?: number;
  oldestTimeMs?: number;
  /** Append latency samples since the last drain (seconds), for histograms. */
  drainAppendLatencies(): number[];
  /** Batch sizes since the last drain. */
  drainBatchSizes(): number[];
}

const KEY_LEN = 1 + 8 + 2 + 1 + 8 + 8 + 8;

/** Big-endian stores by hand: Buffer's writeUInt32BE checks its arguments on every call (a record writes nine). */
function u32(b: Buffer, off: number, v: number): void {
  b[off] = v >>> 24;
  b[off + 1] = v >>> 16;
  b[off + 2] = v >>> 8;
  b[off + 3] = v;
}
function u64(b: Buffer, off: number, v: number): void {
  u32(b, off, Math.floor(v / 0x100000000));
  u32(b, off + 4, v >>> 0);
}
function r64(b: Buffer, off: number): number {
  return b.readUInt32BE(off) * 0x100000000 + b.readUInt32BE(off + 4);
}

/** Write a record's index key (KEY_LEN bytes) into `b` at `at`. */
function writeRecordKey(b: Buffer, at: number, seq: number, vol: number, op: RecordOp, offset: number, length: number, timeMs: number): void {
  b[at] = 0x72; // 'r'
  u64(b, at + 1, seq);
  b[at + 9] = vol >>> 8;
  b[at + 10] = vol;
  b[at + 11] = op === 'write' ? 0 : OP_CODES[op]; // the common case without a keyed lookup
  u64(b, at + 12, offset);
  u64(b, at + 20, length);
  u64(b, at + 28, timeMs);
}

function seqKey(seq: number): Buffer {
  const k = Buffer.alloc(9);
  k[0] = 0x72;
  u64(k, 1, seq);
  return k;
}

interface DecodedKey {
  seq: number;
  vol: number;
  op: RecordOp;
  offsetBytes: number;
  lengthBytes: number;
  timeMs: number;
}

export function decodeKey(k: Buffer): DecodedKey {
  if (k.length !== KEY_LEN || k[0] !== 0x72 || k[11] > 2) throw new JournalError(JournalErrorCode.Corrupt, `malformed journal key (${k.length} bytes)`);
  return { seq: r64(k, 1), vol: k.readUInt16BE(9), op: OPS[k[11]], offsetBytes: r64(k, 12), lengthBytes: r64(k, 20), timeMs: r64(k, 28) };
}

const META_VOLUMES = Buffer.from('mvolumes');
const META_CHECKPOINT = Buffer.from('mcheckpoint');
const META_BASE = Buffer.from('mbase');
const META_FOLD = Buffer.from('mfold');
/** META_BASE's value while history waits for a rebase (noBase). */
const NO_BASE = Buffer.from(JSON.stringify({ seq: -1, timeMs: 0 }));
const META_RETENTION = Buffer.from('mretention');
const META_SYNCED = Buffer.from('msynced');
const RECORD_END = Buffer.from([0x73]);
/** A replica's coalesced batches: 'g' + the batch's last sequence → its first missing one. */
const GAP_PREFIX = 0x67;
const GAP_END = Buffer.from([GAP_PREFIX + 1]);

/** Named entries (bookmarks): 'k' + the name. */
const NAMED_PREFIX = Buffer.from('k');
const NAMED_END = Buffer.from('l');

/** One write of a LevelDB batch. */
type LevelOp = { type: 'del'; key: Buffer } | { type: 'put'; key: Buffer; value: Buffer };

/** The LevelDB put of the synced point (META_SYNCED): one per index batch at most, not per record. */
function syncedPut(seq: number): { type: 'put'; key: Buffer; value: Buffer } {
  const value = Buffer.allocUnsafe(8);
  u64(value, 0, seq);
  return { type: 'put', key: META_SYNCED, value };
}

function gapKey(toSeq: number): Buffer {
  const k = Buffer.alloc(9);
  k[0] = GAP_PREFIX;
  u64(k, 1, toSeq);
  return k;
}
const EMPTY_DATA = Buffer.alloc(0);
const DONE = Promise.resolve();
/** Tests only: OFFSITE_FAILPOINT=journal-reset-midway kills the process inside a reset, once its records are dropped and before its checkpoint is written. */
const RESET_FAILPOINT = process.env.OFFSITE_FAILPOINT === 'journal-reset-midway';

/** An index entry still to be put in LevelDB (its record is already in a segment). */
interface Pending {
  /** The record's index key: KEY_LEN bytes of `keys` from `keyAt` (a batch's headers, or a key of its own). */
  keys: Buffer;
  keyAt: number;
  segment: number;
  /** Where the record's data starts. */
  position: number;
  dataLength: number;
  seq: number;
}

/** Records per LevelDB entry of the index, at most. */
const INDEX_GROUP = 256;
const ENTRY_BYTES = KEY_LEN + 16;

/** The LevelDB puts for index entries (consecutive records, in order): one per group. */
function indexPuts(pending: readonly Pending[]): { type: 'put'; key: Buffer; value: Buffer }[] {
  const ops: { type: 'put'; key: Buffer; value: Buffer }[] = [];
  for (let i = 0; i < pending.length; i += INDEX_GROUP) {
    const end = Math.min(pending.length, i + INDEX_GROUP);
    const value = Buffer.allocUnsafe((end - i) * ENTRY_BYTES);
    for (let j = i; j < end; j++) {
      const p = pending[j];
      const at = (j - i) * ENTRY_BYTES;
      // Byte by byte: Buffer.copy's view and native call cost more than 36 stores.
      const { keys, keyAt } = p;
      for (let k = 0; k < KEY_LEN; k++) value[at + k] = keys[keyAt + k];
      u32(value, at + KEY_LEN, p.segment);
      u64(value, at + KEY_LEN + 4, p.position);
      u32(value, at + KEY_LEN + 12, p.dataLength);
    }
    ops.push({ type: 'put', key: seqKey(pending[end - 1].seq), value });
  }
  return ops;
}

/** The records of one LevelDB index entry: [key, pointer] pairs, views into it. */
function* indexEntries(k: Buffer, v: Buffer): Generator<[Buffer, Buffer]> {
  if (k.length === KEY_LEN) {
    yield [k, v];
    return;
  }
  if (k.length !== 9 || v.length % ENTRY_BYTES) throw new JournalError(JournalErrorCode.Corrupt, `malformed journal index entry (${k.length}-byte key, ${v.length}-byte value)`);
  for (let at = 0; at < v.length; at += ENTRY_BYTES) yield [v.subarray(at, at + KEY_LEN), v.subarray(at + KEY_LEN, at + ENTRY_BYTES)];
}

/** The data length in a record's pointer (segment u32, position u64, data length u32). */
function dataLength(ptr: Buffer): number {
  return ptr.readUInt32BE(12);
}

/** A record appended but not yet written to its segment. */
interface BatchedRecord extends JournalRecord {
  vol: number;
  /** Where its header starts in the segment. */
  at: number;
}

/**
 * Records appended in one turn of the event loop (the commands of one socket read, a replicated
 * segment), written together at the end of it with one writev: a group commit. Their writers
 * are answered together, so their image writes can be combined too (FileVolume.writeCombined).
 */
interface SegmentBatch {
  segment: number;
  fd: number;
  /** Where the first record starts; the others follow contiguously. */
  position: number;
  bytes: number;
  /** The records' headers, back to back (SEGMENT_HEADER bytes each, grown as records join). */
  headers: Buffer;
  /** The records' data, one entry per record (empty for an unmap). */
  datas: Buffer[];
  recs: BatchedRecord[];
  /** performance.now() when its first record was appended (append latency). */
  startedMs: number;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Records in one batch, at most; its header slab starts with room for BATCH_FIRST and doubles. */
const BATCH_RECORDS = MAX_BATCH_RECORDS / 2;
const BATCH_FIRST = 32;
const ZERO_MAGIC = Buffer.alloc(4);

/** Applies records to an image (the journaled volume's image, a base, or a replay output). */
export interface RecordTarget {
  apply(rec: JournalRecord): Promise<void>;
}

const SEGMENT_BYTES = 64 * 1024 * 1024;
/** Spare segment files kept for reuse (1 GiB); with a size cap, never more than a quarter of it. */
const SPARE_SEGMENTS = 16;
/**
 * Tests only: OFFSITE_FAILPOINT=journal-index-stall never puts index entries in LevelDB, so
 * acknowledged records exist only in their segments until the next start rebuilds them.
 */
const INDEX_STALL = process.env.OFFSITE_FAILPOINT === 'journal-index-stall';
/**
 * Index entries wait this long for more records to share a LevelDB batch, unless a full group
 * is queued or someone needs them (a reader past the recent-record cache, a checkpoint, close):
 * one batch per few records cost more main-thread time than the rest of the index.
 */
const INDEX_DELAY_MS = 20;
/**
 * The journal's cache of recent records (see RecentRecords): what it may hold, and the biggest
 * record it takes. It saves a small record the index lookup and the segment read, and keeping
 * its data costs little. A big record's buffer held for the shipper is a buffer the pool cannot
 * hand to the next command: a 32 MiB cache kept that much command memory cycling, out of the CPU
 * caches, where without it the same few buffers come back hot. Measured with a replica on
 * loopback, 4 interleaved runs each: 128K writes 1094 MiB/s with no cache, 965 with 2 MiB, 801
 * with 8 MiB, 661 with 32 MiB (1.40 vs 2.16 CPU s/GiB); 4K writes 178 with 2 MiB, 174 with
 * 32 MiB, 165 with none (7.54 CPU s/GiB, against 6.70).
 */
const RECENT_BYTES = 4 * 1024 * 1024;
const RECENT_MAX_RECORD = 32 * 1024;

/** Append-only data files holding record bytes; the LevelDB index points into them. */
class SegmentStore {
  private current?: { id: number; fd: number; size: number };
  private readFds = new Map<number, number>();
  private dirty = new Set<number>();
  /**
   * Descriptors an fdatasync is under way on (how many): a segment trimmed meanwhile is closed
   * when its sync ends, not under it (the sync would fail with EBADF, or reach whatever file
   * took the number, and a failed sync stops the journal).
   */
  private syncingFds = new Map<number, number>();
  private closeAfterSync = new Set<number>();
  /** Highest sequence number stored in each segment. */
  private maxSeq = new Map<number, number>();
  private nextId: number;
  /** A segment file was created or renamed since the directory was last synced. */
  private dirDirty = false;

  /**
   * Fully trimmed segment files kept for reuse (a ring, as databases recycle their logs):
   * overwriting a file's cached pages costs about half of appending new ones, the biggest
   * part of a journaled write. At most `spareLimit` of them; dropped when space runs low.
   */
  private free: string[] = [];
  private spareLimit = SPARE_SEGMENTS;

  constructor(private readonly dir: string) {
    let max = 0;
    for (const f of readdirSync(dir)) {
      const m = /^(\d+)\.seg$/.exec(f);
      if (m) max = Math.max(max, Number(m[1]));
      else if (/^free-\d+\.seg$/.test(f)) this.free.push(path.join(dir, f));
    }
    this.nextId = max + 1;
  }

  private path(id: number): string {
    return path.join(this.dir, `${String(id).padStart(8, '0')}.seg`);
  }

  /** The file of a segment, for messages. */
  fileOf(id: number): string {
    return this.path(id);
  }

  /**
   * Room for one record (header + data) at the end of the current segment, opening the next
   * segment file when it would not fit. Reservations are contiguous: the journal writes the
   * records of a group commit with one writev from the first one's position. Throws when a new
   * file cannot be made (ENOSPC...), leaving everything as it was.
   */
  reserve(length: number): { segment: number; fd: number; position: number } {
    let cur = this.current;
    if (!cur || cur.size + length > SEGMENT_BYTES) {
      const id = this.nextId;
      const recycled = this.free.pop();
      try {
        if (recycled) renameSync(recycled, this.path(id));
        cur = { id, fd: openSync(this.path(id), recycled ? 'r+' : 'w+'), size: 0 };
      } catch (e) {
        if (recycled) this.free.push(recycled);
        throw e;
      }
      this.nextId++;
      this.current = cur;
      this.readFds.set(id, cur.fd);
      this.dirDirty = true;
    }
    const position = cur.size;
    cur.size += length;
    this.dirty.add(cur.id);
    return { segment: cur.id, fd: cur.fd, position };
  }

  /** Records up to `seq` are written in `segment`. */
  written(segment: number, seq: number): void {
    this.maxSeq.set(segment, seq);
  }

  /**
   * A group commit failed: give back every reservation from `position` in `segment` on. Segment
   * files opened after it hold nothing written (one batch is written at a time, in order) and
   * are removed.
   */
  rollback(segment: number, position: number): void {
    for (const [id, fd] of [...this.readFds]) {
      if (id <= segment) continue;
      this.closeFd(fd);
      this.readFds.delete(id);
      this.dirty.delete(id);
      this.maxSeq.delete(id);
      try {
        unlinkSync(this.path(id));
      } catch {
        /* already gone */
      }
    }
    const fd = this.readFds.get(segment);
    if (fd === undefined) throw new JournalError(JournalErrorCode.Write, `journal segment ${segment} is not open`);
    this.current = { id: segment, fd, size: position };
    this.nextId = segment + 1;
  }

  /**
   * Records written after `after` (the last indexed record, or the start of the oldest segment
   * when the index is empty, or of the next one when that record's file is gone) that the index
   * does not know, read back in order. A file's live records end at the first one that is torn
   * (header or checksum), written for another file (the old contents of a reused spare) or not
   * after the one before (sequence numbers increase; a replica's have gaps where batches were
   * coalesced); the next file must go on from there, or the scan ends. Each process life writes into a new file, so the live part of the last indexed
   * segment is often followed by a reused file's old records, with the rest in the next file.
   */
  *scan(after: { segment: number; position: number } | undefined, afterSeq: number): Generator<{ key: Buffer; segment: number; position: number; dataLength: number }> {
    const ids = readdirSync(this.dir)
      .map((f) => /^(\d+)\.seg$/.exec(f))
      .filter((m): m is RegExpExecArray => !!m)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    if (!ids.length) return;
    // Without an indexed record to start from, read from the oldest segment and pass over the
    // records the index trimmed (≤ afterSeq). The same when the last indexed record's file is
    // gone (its records were trimmed, and LevelDB lost the write that forgot them): the records
    // after it are in the later files.
    const from = after && ids.includes(after.segment) ? after : undefined;
    let skipping = !from;
    let id = from ? from.segment : after ? (ids.find((x) => x > after.segment) ?? -1) : ids[0];
    let pos = from ? from.position : 0;
    let last = afterSeq;
    let moved = false;
    const header = Buffer.allocUnsafe(SEGMENT_HEADER);
    while (ids.includes(id)) {
      let found = false;
      const fd = openSync(this.path(id), 'r');
      try {
        for (;;) {
          if (readSync(fd, header, 0, SEGMENT_HEADER, pos) !== SEGMENT_HEADER || header.readUInt32BE(0) !== SEGMENT_MAGIC) break;
          const dataLength = header.readUInt32BE(8);
          if (dataLength > SEGMENT_BYTES) break;
          const data = Buffer.allocUnsafe(dataLength);
          if (dataLength && readSync(fd, data, 0, dataLength, pos + SEGMENT_HEADER) !== dataLength) break;
          if (recordChecksum(header, data, SEAL) !== header.readUInt32BE(4)) break;
          // 0: written before records named their file (no reused file can hold a newer one).
          const owner = header.readUInt32BE(SEGMENT_OWNER_AT);
          if (owner !== 0 && owner !== id) break;
          const key = Buffer.from(header.subarray(SEGMENT_KEY_AT, SEGMENT_KEY_AT + KEY_LEN));
          const seq = r64(key, 1);
          const at = pos;
          pos += SEGMENT_HEADER + dataLength;
          if (skipping && seq <= afterSeq) continue;
          if (seq <= last) break;
          skipping = false;
          found = true;
          last = seq;
          yield { key, segment: id, position: at + SEGMENT_HEADER, dataLength };
        }
      } finally {
        closeSync(fd);
      }
      // Records go on in the next segment file, or nowhere.
      if (moved && !found && !skipping) return;
      moved = true;
      id = skipping ? (ids.find((x) => x > id) ?? -1) : id + 1;
      pos = 0;
    }
  }

  /** The next record goes to a new file; the current one is dropped like any other once trimmed. */
  retireCurrent(): void {
    this.current = undefined;
  }

  /** Note a segment found through the index at load time. */
  noteSeq(segment: number, seq: number): void {
    if ((this.maxSeq.get(segment) ?? 0) < seq) this.maxSeq.set(segment, seq);
  }

  read(segment: number, position: number, length: number): Buffer {
    return this.readInto(segment, position, acquireBuffer(length)); // a reader done with it gives it back (see readAfter)
  }

  /** Fill `out` from the segment at `position`; returns `out`. */
  readInto(segment: number, position: number, out: Buffer): Buffer {
    let fd = this.readFds.get(segment);
    if (fd === undefined) {
      fd = openSync(this.path(segment), 'r');
      this.readFds.set(segment, fd);
    }
    const length = out.length;
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, position + done);
      if (n === 0) throw new JournalError(JournalErrorCode.Corrupt, `journal segment ${segment} is short at ${position + done}`);
      done += n;
    }
    return out;
  }

  /**
   * Why the record whose data starts at `position` in `segment` is not the record its index
   * entry names (`key`, `dataLength`), or undefined when it is: the header's magic, key, data
   * length and owning file, then the checksum over the header and the data (`data` when the
   * caller read it already, else read here into a pooled buffer). `header` is the caller's
   * scratch (SEGMENT_HEADER bytes): no allocation for a record without data.
   */
  checkRecord(segment: number, position: number, key: Buffer, dataLength: number, header: Buffer, data?: Buffer): string | undefined {
    let own: Buffer | undefined;
    try {
      if (position < SEGMENT_HEADER) return `its index entry points before the file's first record (${position})`;
      this.readInto(segment, position - SEGMENT_HEADER, header);
      if (header.readUInt32BE(0) !== SEGMENT_MAGIC) return 'no record header (bad magic)';
      const headerLength = header.readUInt32BE(8);
      if (headerLength !== dataLength) return `its header gives ${headerLength} data bytes, the index ${dataLength}`;
      if (key.compare(header, SEGMENT_KEY_AT, SEGMENT_KEY_AT + KEY_LEN, 0, KEY_LEN) !== 0) {
        return r64(header, SEGMENT_KEY_AT + 1) === r64(key, 1) ? 'its header key differs from the index entry' : `its header holds record ${r64(header, SEGMENT_KEY_AT + 1)}`;
      }
      const owner = header.readUInt32BE(SEGMENT_OWNER_AT);
      // 0: written before records named their file.
      if (owner !== 0 && owner !== segment) return `it was written for segment file ${owner}`;
      if (!data) data = dataLength ? (own = this.readInto(segment, position, acquireBuffer(dataLength))) : EMPTY_DATA;
      if (recordChecksum(header, data, SEAL) !== header.readUInt32BE(4)) return 'checksum mismatch';
      return undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'its segment file is missing';
      if (e instanceof JournalError) return e.message;
      throw e;
    } finally {
      if (own) releaseBuffer(own);
    }
  }

  /**
   * fdatasync the segment files holding records after `seq` (the records an earlier process
   * life left, maybe only in the page cache), and their directory.
   */
  async syncFilesAfter(seq: number): Promise<void> {
    for (const [id, max] of this.maxSeq) {
      if (max <= seq) continue;
      // Gone (a reset or a trim deleted it, and a power loss took back the index write that forgot it): nothing to sync.
      const fh = await open(this.path(id), 'r').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      });
      if (!fh) continue;
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
    }
    await syncDir(this.dir);
  }

  /** fdatasync (on the thread pool) every segment written since the last call. */
  async sync(): Promise<void> {
    const fds: number[] = [];
    for (const id of this.dirty) {
      const fd = this.readFds.get(id);
      if (fd !== undefined) fds.push(fd);
    }
    this.dirty.clear();
    for (const fd of fds) this.syncingFds.set(fd, (this.syncingFds.get(fd) ?? 0) + 1);
    // Tests only: OFFSITE_FAILPOINT=journal-sync-slow holds each fdatasync back 300 ms (a slow disk).
    const hold = process.env.OFFSITE_FAILPOINT === 'journal-sync-slow' ? 300 : 0;
    const syncs = fds.map((fd) => new Promise<void>((resolve, reject) => setTimeout(() => fdatasync(fd, (e) => (e ? reject(e) : resolve())), hold)));
    if (this.dirDirty) {
      // A new or renamed segment file: its directory entry must be durable too.
      this.dirDirty = false;
      syncs.push(syncDir(this.dir));
    }
    // Every sync settles before any descriptor is let go (Promise.all would return at the first failure).
    const results = await Promise.allSettled(syncs);
    for (const fd of fds) {
      const n = this.syncingFds.get(fd)! - 1;
      if (n > 0) this.syncingFds.set(fd, n);
      else {
        this.syncingFds.delete(fd);
        if (this.closeAfterSync.delete(fd)) closeSync(fd);
      }
    }
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /** Close a segment's descriptor now, or when the syncs under way on it end. */
  private closeFd(fd: number): void {
    if (this.syncingFds.has(fd)) this.closeAfterSync.add(fd);
    else closeSync(fd);
  }

  /**
   * The segments whose records are all ≤ seq: never the one being written, nor one that a
   * group commit still has to write to (`busy`; its fd would be closed, or reused by the next
   * file opened, under the pending writev). They stay so: only the current file gets records.
   */
  droppable(seq: number, busy: ReadonlySet<number> = new Set()): number[] {
    const ids: number[] = [];
    for (const [id, max] of this.maxSeq) if (max <= seq && id !== this.current?.id && !busy.has(id)) ids.push(id);
    return ids;
  }

  /** Delete segments whose records are all ≤ seq (see droppable). */
  dropThrough(seq: number, busy: ReadonlySet<number> = new Set(), unlinkNow = false): void {
    this.drop(this.droppable(seq, busy), unlinkNow);
  }

  /** Delete these segments (from droppable), or keep them as spares for reuse. */
  drop(ids: readonly number[], unlinkNow = false): void {
    for (const id of ids) {
      if (!this.maxSeq.has(id)) continue;
      const fd = this.readFds.get(id);
      if (fd !== undefined) this.closeFd(fd);
      this.readFds.delete(id);
      this.maxSeq.delete(id);
      this.dirty.delete(id);
      if (this.free.length < this.spareLimit) {
        const spare = path.join(this.dir, `free-${id}.seg`);
        try {
          renameSync(this.path(id), spare);
          this.free.push(spare);
        } catch (e) {
          // Gone already: the index named it after a power loss undid the trim that dropped it.
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        }
      } else {
        // Off the event loop: freeing 64 MiB of page cache is not free (a reset waits for it).
        if (unlinkNow) rmSync(this.path(id), { force: true });
        else unlink(this.path(id), () => undefined);
      }
    }
  }

  /**
   * Zero the magic of the records whose headers start at `headers` (they are being cut from the
   * journal), and sync: no start after a crash reads them back as records.
   */
  zeroHeaders(headers: readonly { segment: number; position: number }[]): void {
    const bySegment = new Map<number, number[]>();
    for (const h of headers) {
      const list = bySegment.get(h.segment);
      if (list) list.push(h.position);
      else bySegment.set(h.segment, [h.position]);
    }
    for (const [id, positions] of bySegment) {
      let fd: number;
      try {
        fd = openSync(this.path(id), 'r+');
      } catch (e) {
        // A file already gone holds no record to read back.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
      try {
        for (const p of positions) writeSync(fd, ZERO_MAGIC, 0, 4, p);
        fdatasyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
  }

  /**
   * After a cut: the files after `lastKept` (the one holding the newest kept record) hold only
   * cut records and go; the next record starts a new file right after it, so that a start's scan
   * (which goes on file by file) finds it. `keptSeq` is the newest record kept in `lastKept`.
   */
  async cutAfter(lastKept: number, keptSeq: number | undefined): Promise<void> {
    for (const f of readdirSync(this.dir)) {
      const m = /^(\d+)\.seg$/.exec(f);
      const id = m ? Number(m[1]) : undefined;
      if (id === undefined || id <= lastKept) continue;
      const fd = this.readFds.get(id);
      if (fd !== undefined) this.closeFd(fd);
      this.readFds.delete(id);
      this.maxSeq.delete(id);
      this.dirty.delete(id);
      unlinkSync(this.path(id));
    }
    if (keptSeq !== undefined) this.maxSeq.set(lastKept, keptSeq);
    this.current = undefined;
    this.nextId = lastKept + 1;
    await syncDir(this.dir);
  }

  /**
   * Drop every segment file (a reset), the ones the index names and any it lost track of: a
   * reset cut short after its index entries were cleared leaves files no entry names, whose
   * records a later start would otherwise rebuild. Their directory is synced.
   */
  async dropAll(): Promise<void> {
    for (const f of readdirSync(this.dir)) {
      const m = /^(\d+)\.seg$/.exec(f);
      const id = m ? Number(m[1]) : undefined;
      if (id !== undefined && id !== this.current?.id && !this.maxSeq.has(id)) this.maxSeq.set(id, 0);
    }
    this.dropThrough(Number.MAX_SAFE_INTEGER, undefined, true);
    await syncDir(this.dir);
  }

  limitSpares(n: number): void {
    this.spareLimit = n;
    for (const f of this.free.splice(n)) unlink(f, () => undefined);
  }

  /** Give the spare files' space back to the file system; returns how many there were. */
  releaseSpares(): number {
    const spares = this.free.splice(0);
    for (const f of spares) unlink(f, () => undefined);
    return spares.length;
  }

  close(): void {
    for (const fd of this.readFds.values()) this.closeFd(fd);
    this.readFds.clear();
    this.current = undefined;
  }
}

/**
 * A record as written in a segment: magic(4) crc32c(4) dataLength(4) key(KEY_LEN) pad, then the
 * data. The checksum covers everything after itself, data included. With the key (the index
 * entry's key) in the header, the segments alone can rebuild index entries lost in a crash.
 */
const SEGMENT_MAGIC = 0x4f535231; // 'OSR1'
const SEGMENT_HEADER = 52;
const SEGMENT_KEY_AT = 12;
/** The id of the segment file a record was written to (in the header's last 4 bytes, under the checksum). */
const SEGMENT_OWNER_AT = SEGMENT_KEY_AT + KEY_LEN;

/** The checksum sits after the magic and covers the rest of the header, then the data. */
const SEAL: SealLayout = { headerBytes: SEGMENT_HEADER, crcAt: 4, crcFrom: 8 };

/** A record's header at `at` in `h`, all but its checksum (writeRecords seals it); its index key is at SEGMENT_KEY_AT. */
function putRecordHeader(h: Buffer, at: number, segment: number, dataLength: number, seq: number, vol: number, op: RecordOp, offset: number, length: number, timeMs: number): void {
  u32(h, at, SEGMENT_MAGIC);
  u32(h, at + 8, dataLength);
  writeRecordKey(h, at + SEGMENT_KEY_AT, seq, vol, op, offset, length, timeMs);
  u32(h, at + SEGMENT_OWNER_AT, segment);
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function isNoSpace(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || /no space left/i.test(String((e as Error)?.message));
}

/**
 * A range of one volume watched for new records (see Journal.watch): `dirtySeq` is the sequence
 * number of the first record appended after the watch began that touches the range, or Infinity.
 */
export interface RangeWatch {
  readonly volume: string;
  readonly start: number;
  readonly end: number;
  dirtySeq: number;
}

/** The span of a volume that range watches are filed under (see Journal.watch). */
const WATCH_BUCKET = 1 << 20;

export class Journal {
  private db: Level<Buffer, Buffer>;
  /**
   * Ranges someone reads while writes go on (online verify; empty almost always), by volume and
   * WATCH_BUCKET of the volume they lie in: a record looks only at the watches of its own buckets,
   * however many ranges are watched.
   */
  private watches = new Map<string, Map<number, Set<RangeWatch>>>();
  private watchCount = 0;
  private volumes: string[] = [];
  private volumeIndex = new Map<string, number>();
  /** The last record written to its segment (acknowledged, counted, readable). */
  private head = 0;
  /** The last sequence number handed out: head plus the records still being written. */
  private assigned = 0;
  private batches: SegmentBatch[] = [];
  private writeScheduled = false;
  private oldest = 1;
  private queue: Pending[] = [];
  private syncing: Promise<void> = DONE;
  private writing?: Promise<void>;
  private durableSeq = 0;
  /**
   * The synced point (META_SYNCED): every record ≤ it is fdatasynced. Unlike durableSeq (which
   * starts at the head found by a start), it counts an earlier life's records only once they are
   * synced (load), and a tool's journal (inspectOnly) never raises it.
   */
  private syncedSeq = 0;
  /** The synced point as last put in LevelDB. */
  private markedSeq = 0;
  /** Checkpoints under way that carry the synced point (a lowering waits for them). */
  private marking: Promise<unknown> = DONE;
  /**
   * Records of an earlier process life no start checked (those at or before the image
   * checkpoint: verifyTail checks the ones after it), checked when first read; `seen` has a
   * bit per sequence number of the range, set once checked.
   */
  private unchecked?: { from: number; to: number; seen?: Uint8Array };
  /** A record header read back to check it (one at a time: checks are synchronous). */
  private readonly checkHeader = Buffer.allocUnsafe(SEGMENT_HEADER);
  private writtenSeq = 0;
  /** Callers waiting for the index to catch up (it is then written without delay). */
  private urgent = 0;
  private indexTimer?: NodeJS.Timeout;
  private waiters: { after: number; resolve: () => void }[] = [];
  private sizes = new RecordSizes();
  /** Data bytes appended over the journal's life in this process (for bytesAfter). */
  private appendedBytes = 0;
  /** After a resync, until rebase(): no point-in-time base exists. */
  private noBase = false;
  private lastFoldLog = 0;
  /** The file system is (nearly) full: appends are refused with NoSpace until checkSpace() says otherwise. */
  private spaceLow = false;
  private totalBytes = 0;
  private perVolume = new Map<number, { records: number; bytes: number }>();
  private imageSeq = 0;
  /** Every record ≤ this is in its image, maybe only in the page cache (inImages). */
  private inImagesSeq = 0;
  /** The newest FUA record: records up to it leave the journal only behind a checkpoint. */
  private fuaSeq = 0;
  /** The newest record trimmed while only in the images' page cache (see inImages). */
  private droppedSeq = 0;
  private ackedSeq = 0;
  private base?: { seq: number; timeMs: number };
  /**
   * A fold into the base images through this sequence began and is not recorded done (a crash,
   * a failed write): the base images hold any mix of the states from base.seq to it. Points
   * before it are not replayable; the next fold re-applies (base.seq, foldTo] first.
   */
  private foldTo?: number;
  private counters = { appends: 0, batches: 0, batchedRecords: 0, syncs: 0, trimmed: 0, folded: 0, foldedUnshipped: 0, tornRecordsDropped: 0 };
  private loggedUnshipped = false;
  /** The newest record time handed out or read (stamps never go back: see stamp). */
  private lastStampMs = 0;
  private loggedClockBackAt = -Infinity;
  private latencies: number[] = [];
  private batchSizes: number[] = [];
  private failed?: unknown;
  private closed = false;
  private recent = new RecentRecords(RECENT_BYTES, RECENT_MAX_RECORD);
  private trimming?: Promise<void>;
  /** Readers of the history (a point-in-time test copy being built): no trim or fold meanwhile. */
  private historyHolds = 0;
  private segments!: SegmentStore;
  /** Called when a record begins a new segment file (the keeper's cue to trim). */
  onNewSegment?: () => void;

  private constructor(private readonly opts: JournalOptions) {
    // Large values, short lives: a big memtable so most records are trimmed before they ever
    // reach an SST, no compression (block data rarely compresses cheaply), larger files.
    const tuning = { writeBufferSize: 64 * 1024 * 1024, compression: false, maxFileSize: 32 * 1024 * 1024 };
    this.db = new Level<Buffer, Buffer>(opts.dir, { keyEncoding: 'buffer', valueEncoding: 'buffer', ...tuning });
  }

  static async open(opts: JournalOptions): Promise<Journal> {
    const j = new Journal(opts);
    await mkdir(path.join(opts.dir, 'segments'), { recursive: true });
    j.segments = new SegmentStore(path.join(opts.dir, 'segments'));
    if (opts.maxBytes !== undefined) j.segments.limitSpares(Math.min(SPARE_SEGMENTS, Math.floor(opts.maxBytes / 4 / SEGMENT_BYTES)));
    try {
      await j.db.open();
    } catch (e) {
      throw new JournalError(JournalErrorCode.Open, `cannot open journal at ${opts.dir}: ${(e as Error).message}`, { cause: e });
    }
    try {
      await j.load();
    } catch (e) {
      // A refused start lets go of LevelDB's lock and the segment files: the caller may report and retry.
      j.closed = true;
      clearTimeout(j.indexTimer);
      j.segments.close();
      await j.db.close().catch(() => undefined);
      throw e;
    }
    return j;
  }

  get dir(): string {
    return this.opts.dir;
  }

  private async load(): Promise<void> {
    const vols = await this.db.get(META_VOLUMES);
    if (vols) this.volumes = JSON.parse(vols.toString()) as string[];
    this.volumes.forEach((v, i) => this.volumeIndex.set(v, i));
    const cp = await this.db.get(META_CHECKPOINT);
    if (cp) {
      const c = JSON.parse(cp.toString()) as { imageSeq: number; droppedSeq?: number };
      this.imageSeq = c.imageSeq;
      this.droppedSeq = c.droppedSeq ?? 0;
    }
    if (this.opts.ownsRetention) {
      await this.db.put(META_RETENTION, Buffer.from(JSON.stringify({ retainMs: this.opts.retainMs ?? 0, retainBytes: this.opts.retainBytes ?? 0 })));
    } else {
      const r = await this.db.get(META_RETENTION);
      if (r) {
        const kept = JSON.parse(r.toString()) as { retainMs: number; retainBytes: number };
        this.opts.retainMs ??= kept.retainMs || undefined;
        this.opts.retainBytes ??= kept.retainBytes || undefined;
      }
    }
    const base = await this.db.get(META_BASE);
    if (base) {
      const b = JSON.parse(base.toString()) as { seq: number; timeMs: number };
      if (b.seq < 0) this.noBase = true;
      else this.base = b;
    }
    const fold = await this.db.get(META_FOLD);
    if (fold) this.foldTo = (JSON.parse(fold.toString()) as { toSeq: number }).toSeq;
    const synced = await this.db.get(META_SYNCED);
    if (synced?.length === 8) this.syncedSeq = this.markedSeq = r64(synced, 0);
    let first = 0;
    let last: { segment: number; position: number } | undefined;
    // Records of an earlier process life: their ages from their stamps, by the clocks' offset now
    // (none in the future: a clock set back since then leaves them written just now).
    const nowMono = performance.now();
    const offset = wallToMonoOffset();
    for await (const [gk, gv] of this.db.iterator({ gte: seqKey(0), lt: RECORD_END })) {
      for (const [k, v] of indexEntries(gk, gv)) {
        const d = decodeKey(k);
        if (!first) first = d.seq;
        this.head = d.seq;
        last = { segment: v.readUInt32BE(0), position: r64(v, 4) + dataLength(v) };
        this.segments.noteSeq(v.readUInt32BE(0), d.seq);
        this.track(d.seq, d.vol, dataLength(v), d.timeMs, monoOfWall(d.timeMs, offset, nowMono));
      }
    }
    // An empty journal goes on after everything it ever held: its sequence numbers are never
    // handed out again (the replica has them), nor are stale records of its spare files read back.
    if (!first) this.head = Math.max(this.imageSeq, this.base?.seq ?? 0, this.droppedSeq);
    // Records acknowledged after the index's last batch (a crash): rebuilt from the segments.
    const found: Pending[] = [];
    for (const r of this.segments.scan(last, this.head)) {
      // A volume the list does not have is indexed too: verifyTail refuses or cuts from there.
      const d = decodeKey(r.key);
      found.push({ keys: r.key, keyAt: 0, segment: r.segment, position: r.position, dataLength: r.dataLength, seq: d.seq });
      if (!first) first = d.seq;
      this.head = d.seq;
      this.segments.noteSeq(r.segment, d.seq);
      this.track(d.seq, d.vol, r.dataLength, d.timeMs, monoOfWall(d.timeMs, offset, nowMono));
    }
    if (found.length) {
      await this.db.batch(indexPuts(found));
      this.opts.logger?.warn({ records: found.length, fromSeq: found[0].seq, toSeq: this.head }, 'journal: index entries rebuilt from the segments (records acknowledged before a crash)');
    }
    this.oldest = first || this.head + 1;
    this.durableSeq = this.writtenSeq = this.assigned = this.head;
    if (this.syncedSeq > this.head) {
      // The scan stopped short of synced records (torn, or their file gone): acknowledged writes are missing.
      const file = last ? this.segments.fileOf(last.segment) : path.join(this.opts.dir, 'segments');
      throw new JournalError(
        JournalErrorCode.DurableRecordCorrupt,
        `journal records ${this.head + 1}..${this.syncedSeq} were synced (acknowledged as durable) but are not readable after record ${this.head} (${file}): the start is refused rather than lose them; restore the data directory from a copy, or rebuild this site from its peer`,
      );
    }
    await this.verifyTail();
    const checkedAfter = Math.max(this.imageSeq, this.oldest - 1);
    if (checkedAfter >= this.oldest && this.head >= this.oldest) this.unchecked = { from: this.oldest, to: Math.min(checkedAfter, this.head) };
    if (!this.opts.inspectOnly && this.head > this.syncedSeq) {
      // An earlier life's records may be only in the page cache (a crash of the process): synced
      // now, they are below the synced point like this life's synced records (put with the next
      // index batch or checkpoint).
      await this.segments.syncFilesAfter(this.syncedSeq);
      this.syncedSeq = this.head;
    }
    // Records were trimmed without a fold (no history then, or a journal from before trims
    // recorded that): the empty volumes are no base for what is left, and history, if kept,
    // waits for a rebase. Folding them onto empty images built a base missing those writes.
    if (!this.base && !this.noBase && this.oldest !== 1) {
      this.noBase = true;
      if (this.opts.ownsRetention) await this.db.put(META_BASE, NO_BASE, { sync: true });
    }
  }

  /**
   * Check every indexed record after the image checkpoint (what a recovery replays onto the
   * images) against its segment: header, key, length, owning file and checksum. The first bad
   * one ends the journal's good prefix. After the synced point, it and everything after it are a
   * torn tail no writer was told was durable: cut (truncateAfter), counted and logged. At or
   * below it, the start is refused: cutting would lose acknowledged writes. A tool
   * (inspectOnly) refuses either way and changes nothing.
   */
  private async verifyTail(): Promise<void> {
    const after = Math.max(this.imageSeq, this.oldest - 1);
    if (this.head <= after) return;
    let bad: { seq: number; segment: number; why: string; vol?: number } | undefined;
    scan: for await (const [gk, gv] of this.db.iterator({ gte: seqKey(after + 1), lt: RECORD_END })) {
      for (const [k, v] of indexEntries(gk, gv)) {
        const seq = r64(k, 1);
        if (seq <= after) continue;
        const segment = v.readUInt32BE(0);
        // A volume missing from the list (META_VOLUMES lost, as before it was put synced): its
        // record cannot be replayed, nor skipped (the records after it depend on it).
        const vol = k.readUInt16BE(9);
        if (vol >= this.volumes.length) {
          bad = { seq, segment, vol, why: `it is of volume index ${vol}, which the journal's volume list (${this.volumes.join(', ') || 'empty'}) does not have` };
          break scan;
        }
        const why = this.segments.checkRecord(segment, r64(v, 4), k, dataLength(v), this.checkHeader);
        if (why) {
          bad = { seq, segment, why };
          break scan;
        }
      }
    }
    if (!bad) return;
    const file = this.segments.fileOf(bad.segment);
    const what = `journal record ${bad.seq} in ${file} ${bad.vol === undefined ? 'is corrupt' : 'cannot be replayed'} (${bad.why})`;
    if (bad.vol !== undefined) {
      this.opts.logger?.error(
        { seq: bad.seq, volumeIndex: bad.vol, volumes: this.volumes, file, syncedSeq: this.syncedSeq },
        `journal: record ${bad.seq} is of a volume the journal's volume list does not have (lost with a LevelDB write); neither it nor the records after it can be replayed`,
      );
    }
    if (bad.seq <= this.syncedSeq) {
      throw new JournalError(
        JournalErrorCode.DurableRecordCorrupt,
        `${what}, and records up to ${this.syncedSeq} were synced: acknowledged as durable, it cannot be dropped, so the start is refused; restore the data directory from a copy, or rebuild this site from its peer`,
      );
    }
    if (this.opts.inspectOnly) {
      throw new JournalError(
        JournalErrorCode.Corrupt,
        `${what}; it is after the synced point ${this.syncedSeq} (a torn tail, never acknowledged as durable), which the appliance's next start cuts; nothing was changed`,
      );
    }
    const toSeq = this.head;
    const dropped = await this.truncateAfter(bad.seq - 1);
    this.counters.tornRecordsDropped += dropped;
    this.opts.logger?.warn({ fromSeq: bad.seq, toSeq, records: dropped, file, reason: bad.why, syncedSeq: this.syncedSeq }, 'journal: torn tail dropped (records after the synced point that fail their check: never acknowledged as durable)');
  }

  /**
   * A record of an earlier process life that no start checked (see `unchecked`) is checked the
   * first time it is read, with its data as read: JOURNAL_CORRUPT when bad.
   */
  private checkOnFirstRead(seq: number, key: Buffer, ptr: Buffer, data: Buffer): void {
    const u = this.unchecked;
    if (u === undefined || seq < u.from || seq > u.to) return;
    const bit = seq - u.from;
    // One bit per sequence number; a range too wide for that is checked on every read.
    if (u.seen === undefined && u.to - u.from < 2 ** 31) u.seen = new Uint8Array(Math.floor((u.to - u.from) / 8) + 1);
    if (u.seen && u.seen[Math.floor(bit / 8)] & (1 << bit % 8)) return;
    const segment = ptr.readUInt32BE(0);
    const why = this.segments.checkRecord(segment, r64(ptr, 4), key, dataLength(ptr), this.checkHeader, data);
    if (why) throw new JournalError(JournalErrorCode.Corrupt, `journal record ${seq} in ${this.segments.fileOf(segment)} is corrupt (${why})`);
    if (u.seen) u.seen[Math.floor(bit / 8)] |= 1 << bit % 8;
  }

  private track(seq: number, vol: number, bytes: number, timeMs: number, monoMs: number): void {
    this.appendedBytes += bytes;
    if (timeMs > this.lastStampMs) this.lastStampMs = timeMs;
    this.sizes.push(seq, vol, bytes, timeMs, monoMs, this.appendedBytes);
    this.totalBytes += bytes;
    let pv = this.perVolume.get(vol);
    if (!pv) this.perVolume.set(vol, (pv = { records: 0, bytes: 0 }));
    pv.records++;
    pv.bytes += bytes;
  }

  /**
   * The index of a volume in this journal, registering it the first time. `holdsData`: the
   * volume's image existed before this journal knew it (served with --no-journal, or the journal
   * was removed): what it held then is in no record and no base, so history restarts with a
   * rebase (the empty volumes before seq 1 are no base for it).
   */
  async registerVolume(name: string, opts: { holdsData?: boolean } = {}): Promise<void> {
    if (this.volumeIndex.has(name)) return;
    this.volumes.push(name);
    this.volumeIndex.set(name, this.volumes.length - 1);
    // Synced: its records may be acknowledged as durable (FUA) right after, and a start that
    // finds records of a volume it does not know cannot replay them (verifyTail).
    await this.db.put(META_VOLUMES, Buffer.from(JSON.stringify(this.volumes)), { sync: true });
    if (opts.holdsData && !this.noBase) await this.dropHistory();
  }

  hasVolume(name: string): boolean {
    return this.volumeIndex.has(name);
  }

  volumeNames(): readonly string[] {
    return this.volumes;
  }

  headSeq(): number {
    return this.head;
  }

  /** The last sequence number handed out (records up to it may still be being written). */
  assignedSeq(): number {
    return this.assigned;
  }

  /**
   * Watch a range of a volume: every record appended from now on that touches it marks the watch
   * (its sequence number, the first one's). Records appended before this call have sequence
   * numbers ≤ assignedSeq(). Call unwatch() when done.
   */
  watch(volume: string, offsetBytes: number, lengthBytes: number): RangeWatch {
    const w: RangeWatch = { volume, start: offsetBytes, end: offsetBytes + lengthBytes, dirtySeq: Infinity };
    let byBucket = this.watches.get(volume);
    if (!byBucket) this.watches.set(volume, (byBucket = new Map()));
    for (let b = Math.floor(w.start / WATCH_BUCKET); b * WATCH_BUCKET < w.end; b++) {
      let set = byBucket.get(b);
      if (!set) byBucket.set(b, (set = new Set()));
      set.add(w);
    }
    this.watchCount++;
    return w;
  }

  unwatch(w: RangeWatch): void {
    const byBucket = this.watches.get(w.volume);
    let found = false;
    for (let b = Math.floor(w.start / WATCH_BUCKET); byBucket && b * WATCH_BUCKET < w.end; b++) {
      const set = byBucket.get(b);
      if (set?.delete(w)) {
        found = true;
        if (set.size === 0) byBucket.delete(b);
      }
    }
    if (!found) return;
    this.watchCount--;
    if (byBucket!.size === 0) this.watches.delete(w.volume);
  }

  private markWatches(seq: number, volume: string, offsetBytes: number, lengthBytes: number): void {
    const byBucket = this.watches.get(volume);
    if (!byBucket) return;
    const end = offsetBytes + lengthBytes;
    for (let b = Math.floor(offsetBytes / WATCH_BUCKET); b * WATCH_BUCKET < end; b++) {
      const set = byBucket.get(b);
      if (set) for (const w of set) if (w.dirtySeq === Infinity && w.start < end && offsetBytes < w.end) w.dirtySeq = seq;
    }
  }

  oldestSeq(): number {
    return this.oldest;
  }

  /** Highest sequence whose image write completed and was fsynced (recovery starts after it). */
  checkpointSeq(): number {
    return this.imageSeq;
  }

  timeOf(seq: number): number | undefined {
    const i = this.sizes.find(seq);
    return i < 0 ? undefined : this.sizes.timeAt(i);
  }

  /** When the record with this sequence number was written, on the monotonic clock (performance.now()), if retained. */
  monoOf(seq: number): number | undefined {
    const i = this.sizes.find(seq);
    return i < 0 ? undefined : this.sizes.monoAt(i);
  }

  /**
   * The newest retained record before the first one written after `timeMs` (0: none), from the
   * in-memory index: no record is read (a point in time of one volume used to read every
   * volume's records up to it).
   */
  lastSeqUpTo(timeMs: number): number {
    let seq = 0;
    for (let i = 0; i < this.sizes.size; i++) {
      if (this.sizes.timeAt(i) > timeMs) break;
      seq = this.sizes.seqAt(i);
    }
    return seq;
  }

  /** The time of the oldest retained record after `seq` (undefined: none). */
  timeOfFirstAfter(seq: number): number | undefined {
    const i = this.sizes.firstAfter(seq);
    return i < this.sizes.size ? this.sizes.timeAt(i) : undefined;
  }

  /**
   * When the oldest retained record after `seq` was written, on the monotonic clock
   * (performance.now(); undefined: none): for ages that a stepped wall clock must not move.
   */
  monoOfFirstAfter(seq: number): number | undefined {
    const i = this.sizes.firstAfter(seq);
    return i < this.sizes.size ? this.sizes.monoAt(i) : undefined;
  }

  /** When the oldest retained record was written, on the monotonic clock (undefined: none). */
  oldestMonoMs(): number | undefined {
    return this.sizes.size ? this.sizes.monoAt(0) : undefined;
  }

  /**
   * Append one record. The sequence number is assigned now (call order is journal order); the
   * promise resolves once the record is written to its segment, with the others of its group
   * commit (and synced to disk, with everything before it, when `sync`).
   */
  append(volume: string, op: RecordOp, offsetBytes: number, lengthBytes: number, data: Buffer, sync = false): { seq: number; done: Promise<void> } {
    // The records of one group commit (one turn of the event loop) share its first one's time:
    // two clock reads less per record, the biggest part of a 4K record's own cost after the copy.
    const open = this.batches[this.batches.length - 1];
    const timeMs = open?.recs.length ? open.recs[0].timeMs : this.stamp();
    return this.appendRecord(this.assigned + 1, timeMs, volume, op, offsetBytes, lengthBytes, data, sync);
  }

  /**
   * The time of a new record: the wall clock, but never before the newest record's, so that
   * times follow sequence numbers (the point at a time is one point). A clock set back (NTP
   * stepping a clock that ran ahead, an operator) holds the stamps until it passes them again;
   * ages (the RPO, the history window) are measured on the monotonic clock, which no step moves.
   */
  private stamp(): number {
    const now = Date.now();
    if (now >= this.lastStampMs) return (this.lastStampMs = now);
    if (this.lastStampMs - now > 1000 && performance.now() - this.loggedClockBackAt > 60_000) {
      this.loggedClockBackAt = performance.now();
      this.opts.logger?.warn(
        { behindMs: this.lastStampMs - now, newestRecordTime: new Date(this.lastStampMs).toISOString() },
        'journal: the wall clock is behind the newest record (it was set back, or the record came from a site whose clock is ahead): new records keep that record\'s time until the clock passes it; the RPO and the history window are measured on the monotonic clock and are unaffected',
      );
    }
    return this.lastStampMs;
  }

  /**
   * Append a record that already has its sequence number and time (a replica storing the
   * primary's records). Sequence numbers must increase; gaps are allowed (coalesced batches).
   */
  appendAt(seq: number, timeMs: number, volume: string, op: RecordOp, offsetBytes: number, lengthBytes: number, data: Buffer): { seq: number; done: Promise<void> } {
    if (seq <= this.assigned) return { seq: 0, done: Promise.reject(new JournalError(JournalErrorCode.Sequence, `record ${seq} is not after the journal head ${this.assigned}`)) };
    return this.appendRecord(seq, timeMs, volume, op, offsetBytes, lengthBytes, data, false);
  }

  private appendRecord(seq: number, timeMs: number, volume: string, op: RecordOp, offsetBytes: number, lengthBytes: number, data: Buffer, sync: boolean): { seq: number; done: Promise<void> } {
    if (this.failed) return { seq: 0, done: Promise.reject(this.failed) };
    if (this.spaceLow) return { seq: 0, done: Promise.reject(new JournalError(JournalErrorCode.NoSpace, `journal: the file system holding ${this.opts.dir} is (nearly) full`)) };
    if (this.closed) return { seq: 0, done: Promise.reject(new JournalError(JournalErrorCode.Closed, 'journal is closed')) };
    const vol = this.volumeIndex.get(volume);
    if (vol === undefined) return { seq: 0, done: Promise.reject(new JournalError(JournalErrorCode.UnknownVolume, `volume ${volume} is not registered in the journal`)) };
    const length = SEGMENT_HEADER + data.length;
    let at: { segment: number; fd: number; position: number };
    try {
      at = this.segments.reserve(length);
    } catch (e) {
      return { seq: 0, done: Promise.reject(this.writeFailed(e)) };
    }
    // A segment file begun: the keeper trims now rather than at its next tick, so that a burst
    // finds fully trimmed files to reuse instead of making new ones.
    if (at.position === 0) this.onNewSegment?.();
    let b = this.batches[this.batches.length - 1];
    if (!b || b.segment !== at.segment || b.recs.length === BATCH_RECORDS) b = this.newBatch(at.segment, at.fd, at.position);
    const h = b.recs.length * SEGMENT_HEADER;
    if (h === b.headers.length) {
      const grown = Buffer.allocUnsafe(2 * h);
      b.headers.copy(grown);
      b.headers = grown;
    }
    putRecordHeader(b.headers, h, at.segment, data.length, seq, vol, op, offsetBytes, lengthBytes, timeMs);
    b.datas.push(data);
    b.bytes += length;
    b.recs.push({ seq, timeMs, volume, op, offsetBytes, lengthBytes, data, vol, at: at.position });
    this.assigned = seq;
    if (this.watchCount !== 0) this.markWatches(seq, volume, offsetBytes, lengthBytes);
    if (sync) this.fuaSeq = seq;
    if (!this.writeScheduled) {
      // Let the rest of this turn's commands join the batch, then write.
      this.writeScheduled = true;
      setImmediate(() => this.startWrite());
    }
    return { seq, done: sync ? b.done.then(() => this.sync()) : b.done };
  }

  private newBatch(segment: number, fd: number, position: number): SegmentBatch {
    const { promise: done, resolve, reject } = deferred();
    done.catch(() => undefined); // every append hands it to a caller who awaits it
    const b: SegmentBatch = { segment, fd, position, bytes: 0, headers: Buffer.allocUnsafe(BATCH_FIRST * SEGMENT_HEADER), datas: [], recs: [], startedMs: performance.now(), done, resolve, reject };
    this.batches.push(b);
    return b;
  }

  /**
   * Write the pending batches, in order, inline: a page-cache copy costs less than a thread-pool
   * round trip. Never O_APPEND: Linux would ignore the position.
   */
  private startWrite(): void {
    this.writeScheduled = false;
    while (this.batches.length) {
      const b = this.batches[0];
      try {
        writeRecords(b.fd, b.position, b.headers, b.datas, SEAL);
      } catch (e) {
        this.batchFailed(b, Number((e as { written?: number }).written ?? 0), e);
        return;
      }
      this.batchWritten(b);
    }
  }

  /** Every record of the batch is in its segment: it counts, and its writers are answered. */
  private batchWritten(b: SegmentBatch): void {
    this.batches.shift();
    const cache = this.opts.cacheRecent ?? this.opts.replicated;
    // The records' monotonic time: the batch's start (stamped here), or, for records stamped
    // elsewhere (a replica storing the primary's), their stamp by the clocks' offset, never later.
    const offset = wallToMonoOffset();
    for (let i = 0; i < b.recs.length; i++) {
      const r = b.recs[i];
      this.head = r.seq;
      this.track(r.seq, r.vol, r.data.length, r.timeMs, monoOfWall(r.timeMs, offset, b.startedMs));
      if (cache) this.recent.add(r);
      this.queue.push({ keys: b.headers, keyAt: i * SEGMENT_HEADER + SEGMENT_KEY_AT, segment: b.segment, position: r.at + SEGMENT_HEADER, dataLength: r.data.length, seq: r.seq });
    }
    this.noteLatency(b);
    this.counters.appends += b.recs.length;
    this.counters.batches++;
    this.counters.batchedRecords += b.recs.length;
    if (this.batchSizes.length < 10000) this.batchSizes.push(b.recs.length);
    this.segments.written(b.segment, this.head);
    this.wake();
    if (!this.writing) {
      if (this.indexDue()) this.flushIndex();
      else this.scheduleIndex();
    }
    b.resolve();
  }

  /**
   * A segment write failed: nothing of this batch or of those queued behind it counts, and
   * their sequence numbers are handed out again. Headers it did write are zeroed first, so that
   * a start after a crash cannot take them (or records later written over them) for records.
   */
  private batchFailed(b: SegmentBatch, written: number, err: unknown): void {
    const failed = this.batches;
    this.batches = [];
    try {
      for (const r of b.recs) if (r.at < b.position + written) writeSync(b.fd, ZERO_MAGIC, 0, 4, r.at);
      this.segments.rollback(b.segment, b.position);
    } catch (e) {
      this.failed ??= new JournalError(JournalErrorCode.Write, `journal segment could not be restored after a failed write: ${(e as Error).message}`, { cause: e });
    }
    this.assigned = this.head;
    const e = this.writeFailed(err);
    for (const f of failed) f.reject(e);
  }

  /** The error for a record the journal could not write, after noting what it means for the next ones. */
  private writeFailed(e: unknown): JournalError {
    if (isNoSpace(e) && !this.failed) {
      this.spaceLow = true;
      this.opts.logger?.error({ err: e, headSeq: this.head }, 'journal: no space left; writes refused until space returns');
      return new JournalError(JournalErrorCode.NoSpace, `journal: no space left on the device holding ${this.opts.dir}`, { cause: e });
    }
    if (!this.failed) {
      this.failed = new JournalError(JournalErrorCode.Write, `journal segment write failed: ${(e as Error).message}`, { cause: e });
      this.opts.logger?.error({ err: e }, 'journal write failed; refusing further writes');
    }
    return this.failed as JournalError;
  }

  /** Resolves once every record appended so far is written to its segment (or failed). */
  private async drained(): Promise<void> {
    while (this.batches.length) await this.batches[this.batches.length - 1].done.catch(() => undefined);
  }

  /** One sample per record of the batch: each waited from the batch's start, give or take a turn. */
  private noteLatency(b: SegmentBatch): void {
    const seconds = (performance.now() - b.startedMs) / 1000;
    for (let i = 0; i < b.recs.length && this.latencies.length < 10000; i++) this.latencies.push(seconds);
  }

  /**
   * Check the free space of the journal's file system: below the reserve (5% of it, at most
   * 64 MiB) new records are refused with NoSpace, before anything is written; above, accepted
   * again. Called by the keeper every second and after a write hit ENOSPC.
   */
  async checkSpace(): Promise<boolean> {
    try {
      const st = await statfs(this.opts.dir);
      const free = Number(st.bavail) * Number(st.bsize);
      const reserve = Math.min(64 * 1024 * 1024, (Number(st.blocks) * Number(st.bsize)) / 20);
      const low = free < reserve;
      if (low) {
        const released = this.segments.releaseSpares();
        if (released) this.opts.logger?.warn({ spareSegments: released, freeBytes: free }, 'journal: file system nearly full; spare segment files removed');
      }
      if (low !== this.spaceLow) {
        if (low) this.opts.logger?.error({ freeBytes: free, reserveBytes: reserve }, 'journal: file system nearly full; writes refused until space returns');
        else this.opts.logger?.warn({ freeBytes: free }, 'journal: space available again; writes accepted');
      }
      this.spaceLow = low;
    } catch {
      /* statfs unavailable: rely on ENOSPC */
    }
    return !this.spaceLow;
  }

  /** Data bytes appended since this process opened the journal (including what it found). */
  appendedBytesTotal(): number {
    return this.appendedBytes;
  }

  /** Data bytes of the retained records with seq > afterSeq. */
  bytesAfter(afterSeq: number): number {
    if (afterSeq < this.oldest) return this.totalBytes;
    const i = this.sizes.firstAfter(afterSeq);
    if (i >= this.sizes.size) return 0;
    return this.appendedBytes - (this.sizes.cumAt(i) - this.sizes.bytesAt(i));
  }

  /**
   * Forget every record and start over right after `seq` (a replica after a full resync: its
   * images were rebuilt outside the journal). History restarts: no base until rebase().
   */
  async resetTo(seq: number): Promise<void> {
    await this.drained();
    await this.indexed(Number.MAX_SAFE_INTEGER);
    if (this.trimming) await this.trimming.catch(() => undefined);
    await this.syncing;
    // Nothing is synced while the records go (a crash midway leaves some of them, maybe torn).
    await this.lowerSyncedPoint(0);
    await this.db.clear({ gte: seqKey(0), lt: RECORD_END });
    if (RESET_FAILPOINT) process.kill(process.pid, 'SIGKILL');
    await this.db.clear({ gte: gapKey(0), lt: GAP_END });
    // The file being written goes too: the new history starts in a new file, where no dropped
    // record can be read back as one of its own after a crash.
    this.segments.retireCurrent();
    this.sizes.clear();
    this.totalBytes = 0;
    this.perVolume.clear();
    this.head = this.assigned = this.writtenSeq = this.durableSeq = seq;
    this.oldest = seq + 1;
    this.imageSeq = this.inImagesSeq = this.fuaSeq = seq;
    this.droppedSeq = 0;
    this.recent.clear();
    this.unchecked = undefined;
    // No record ≤ seq is left: the synced point goes there with the checkpoint. Synced, and so are
    // the clears before it (one log): only then do the files go, or a power loss could bring back
    // the old index, naming files that are gone, under the old checkpoint.
    this.syncedSeq = seq;
    await this.putCheckpoint([], true);
    await this.segments.dropAll();
    await this.dropHistory();
  }

  /**
   * Give up the point-in-time history until a rebase: recorded first (a crash then leaves no
   * base named), then the base images go, so that nothing folds onto them or reads them again.
   */
  private async dropHistory(): Promise<void> {
    this.base = undefined;
    this.noBase = true;
    this.foldTo = undefined;
    await this.db.batch([
      { type: 'put', key: META_BASE, value: NO_BASE },
      { type: 'del', key: META_FOLD },
    ], { sync: true });
    await rm(path.join(this.opts.dir, 'base'), { recursive: true, force: true });
  }

  /**
   * Forget the records after `seq`, the newest ones, so that records with those sequence numbers
   * can be appended again: a replica's store that failed part-way (the primary sends the batch
   * again from the replica's durable sequence), or a coalesced batch a crash cut short (its first
   * records alone are no state the primary had). Their headers are zeroed and synced first, then
   * the index loses them, then files holding nothing else go; a crash at any step leaves either
   * all of them or none as records. Never below what the images hold (nothing after that is ever
   * trimmed). Returns how many went.
   */
  async truncateAfter(seq: number): Promise<number> {
    await this.drained();
    if (this.head <= seq) return 0;
    const inImages = Math.max(this.imageSeq, this.inImagesSeq);
    if (seq < inImages) throw new JournalError(JournalErrorCode.Sequence, `the journal cannot go back to ${seq}: the images hold records up to ${inImages}`);
    await this.indexed(Number.MAX_SAFE_INTEGER);
    if (this.trimming) await this.trimming.catch(() => undefined);
    // A sync under way would count the cut records as synced once it ends.
    await this.syncing;
    const headers: { segment: number; position: number }[] = [];
    let kept: { segment: number; seq: number } | undefined;
    // Entries still queued (the index may be refusing writes): the cut ones leave the queue.
    const queued = this.queue;
    this.queue = [];
    for (const p of queued) {
      if (p.seq <= seq) {
        this.queue.push(p);
        kept = { segment: p.segment, seq: p.seq };
      } else headers.push({ segment: p.segment, position: p.position - SEGMENT_HEADER });
    }
    const ops: ({ type: 'del'; key: Buffer } | { type: 'put'; key: Buffer; value: Buffer })[] = [];
    let keptInIndex: { segment: number; seq: number } | undefined;
    for await (const [gk, gv] of this.db.iterator({ gte: seqKey(seq + 1), lt: RECORD_END })) {
      let keep = 0;
      for (const [k, v] of indexEntries(gk, gv)) {
        const d = decodeKey(k);
        if (d.seq <= seq) {
          keep++;
          keptInIndex = { segment: v.readUInt32BE(0), seq: d.seq };
        } else headers.push({ segment: v.readUInt32BE(0), position: r64(v, 4) - SEGMENT_HEADER });
      }
      ops.push({ type: 'del', key: Buffer.from(gk) });
      if (keep) ops.push({ type: 'put', key: seqKey(keptInIndex!.seq), value: Buffer.from(gv.subarray(0, keep * ENTRY_BYTES)) });
    }
    if (!keptInIndex) {
      for await (const [gk, gv] of this.db.iterator({ gte: seqKey(0), lt: seqKey(seq + 1), reverse: true, limit: 1 })) {
        let last: Buffer | undefined;
        for (const [k, v] of indexEntries(gk, gv)) last = Buffer.concat([k, v]);
        if (last) keptInIndex = { segment: last.readUInt32BE(KEY_LEN), seq: decodeKey(last.subarray(0, KEY_LEN)).seq };
      }
    }
    kept ??= keptInIndex;
    await this.lowerSyncedPoint(seq);
    this.segments.zeroHeaders(headers);
    await this.db.batch(ops, { sync: true });
    if (headers.length) {
      const firstCut = headers.reduce((m, h) => Math.min(m, h.segment), Number.MAX_SAFE_INTEGER);
      await this.segments.cutAfter(kept ? kept.segment : firstCut - 1, kept?.seq);
    }
    // The bookkeeping of the cut records.
    const from = this.sizes.firstAfter(seq);
    let cut = 0;
    for (let i = from; i < this.sizes.size; i++) {
      const bytes = this.sizes.bytesAt(i);
      this.totalBytes -= bytes;
      this.appendedBytes -= bytes;
      const pv = this.perVolume.get(this.sizes.volAt(i));
      if (pv) {
        pv.records--;
        pv.bytes -= bytes;
      }
      cut++;
    }
    this.sizes.truncateAfter(seq);
    this.recent.clear();
    this.head = this.assigned = seq;
    this.writtenSeq = Math.min(this.writtenSeq, seq);
    this.durableSeq = Math.min(this.durableSeq, seq);
    this.fuaSeq = Math.min(this.fuaSeq, seq);
    if (this.unchecked && this.unchecked.to > seq) this.unchecked.to = seq;
    if (this.sizes.size === 0) this.oldest = seq + 1;
    return cut;
  }

  /**
   * Point-in-time history starts at `seq`: `copyBases` has written the base images equal to the
   * volumes right after `seq` (every record ≤ seq applied). Records ≤ seq are then dropped,
   * unless `keepRecords` (a primary's, which its replica may still need: trimming drops them
   * later without folding them again). Points before `seq` are outside the window from then on.
   */
  async rebase(seq: number, timeMs: number, copyBases: (baseDir: string) => Promise<void>, opts: { keepRecords?: boolean } = {}): Promise<void> {
    // Whatever base there was is overwritten: a crash while copying leaves no base named, and
    // no base file of a volume the copy leaves out stays behind to be read as current.
    await this.dropHistory();
    const dir = path.join(this.opts.dir, 'base');
    await mkdir(dir, { recursive: true });
    await copyBases(dir);
    // The copies are durable before the base names them.
    for (const f of await readdir(dir).catch(() => [])) {
      const fh = await open(path.join(dir, f), 'r+');
      try {
        await fh.datasync();
      } finally {
        await fh.close();
      }
    }
    this.base = { seq, timeMs };
    this.noBase = false;
    await this.db.put(META_BASE, Buffer.from(JSON.stringify(this.base)), { sync: true });
    if (!opts.keepRecords && seq >= this.oldest) await this.dropRecords(seq);
  }

  /**
   * Resolves once every record appended so far is synced to disk: the segments holding them
   * are fdatasynced (the index need not be: recovery rebuilds entries from the segments). One
   * sync runs at a time and covers everything appended before it started (group commit).
   */
  sync(): Promise<void> {
    const target = this.assigned;
    if (this.durableSeq >= target) return DONE;
    const last = this.batches[this.batches.length - 1];
    const written = last ? last.done : DONE;
    const run = this.syncing.then(async () => {
      await written;
      if (this.durableSeq >= target) return;
      const upTo = this.head;
      try {
        await this.segments.sync();
      } catch (e) {
        this.failed ??= new JournalError(JournalErrorCode.Write, `journal sync failed: ${(e as Error).message}`, { cause: e });
        this.opts.logger?.error({ err: e }, 'journal sync failed; refusing further writes');
        throw this.failed;
      }
      this.counters.syncs++;
      if (upTo > this.durableSeq) this.durableSeq = upTo;
      // Every record ≤ upTo is synced: this life's in the files just synced, an earlier one's at load.
      if (upTo > this.syncedSeq && !this.opts.inspectOnly) this.syncedSeq = upTo;
    });
    this.syncing = run.catch(() => undefined);
    return run;
  }

  /**
   * Put queued index entries into LevelDB, everything queued meanwhile in one batch. Records
   * are acknowledged before this (they are in their segments), so a failed batch loses nothing:
   * the entries stay queued and are retried (no space), or the journal refuses further writes
   * and the next start rebuilds them from the segments.
   */
  private async writeLoop(): Promise<void> {
    try {
      for (let first = true; this.queue.length && (first || this.indexDue()); first = false) {
        const batch = this.queue;
        this.queue = [];
        const ops = indexPuts(batch);
        // The synced point rides along when it moved: no write of its own on the write path.
        const mark = this.syncedSeq;
        if (mark !== this.markedSeq) ops.push(syncedPut(mark));
        try {
          await this.db.batch(ops);
          if (mark > this.markedSeq) this.markedSeq = mark;
        } catch (e) {
          this.queue = batch.concat(this.queue);
          if (isNoSpace(e)) {
            this.spaceLow = true;
            this.opts.logger?.error({ err: e, pending: this.queue.length }, 'journal index: no space left; writes refused, index entries kept and retried');
            setTimeout(() => {
              if (!this.writing && this.queue.length && !this.closed) this.writing = this.writeLoop();
            }, 1000).unref();
          } else {
            this.failed ??= new JournalError(JournalErrorCode.Write, `journal index write failed: ${(e as Error).message}`, { cause: e });
            this.opts.logger?.error({ err: e }, 'journal index write failed; refusing further writes (the records are in their segments)');
          }
          return;
        }
        this.writtenSeq = batch[batch.length - 1].seq;
      }
      // Entries queued meanwhile that are not due yet wait for more, as in batchWritten.
      this.scheduleIndex();
    } finally {
      this.writing = undefined;
    }
  }

  private wake(): void {
    if (!this.waiters.length) return;
    const keep: typeof this.waiters = [];
    for (const w of this.waiters) (this.head > w.after ? w.resolve() : keep.push(w));
    this.waiters = keep;
  }

  /** Resolves once the index holds every record up to `seq` (or cannot now: its writes are failing). */
  private async indexed(seq: number): Promise<void> {
    this.urgent++;
    try {
      this.flushIndex();
      while (this.writtenSeq < Math.min(seq, this.head) && this.writing) await this.writing;
    } finally {
      this.urgent--;
    }
  }

  /** A full group is queued, or someone waits for the index. */
  private indexDue(): boolean {
    return this.queue.length >= INDEX_GROUP || this.urgent > 0;
  }

  /** Put the queued index entries within INDEX_DELAY_MS. */
  private scheduleIndex(): void {
    if (this.queue.length && !this.closed) this.indexTimer ??= setTimeout(() => this.flushIndex(), INDEX_DELAY_MS).unref();
  }

  /** Start the index writer now (unless it runs). */
  private flushIndex(): void {
    clearTimeout(this.indexTimer);
    this.indexTimer = undefined;
    if (!this.writing && this.queue.length && !INDEX_STALL && !this.closed) this.writing = this.writeLoop();
  }

  /** Resolves once a record with seq > afterSeq is written (readAfter gives it). */
  waitForAppend(afterSeq: number): Promise<void> {
    if (this.head > afterSeq) return Promise.resolve();
    return new Promise<void>((resolve) => this.waiters.push({ after: afterSeq, resolve }));
  }

  /**
   * Written records with seq > afterSeq, in order, up to about maxBytes of data (at least one).
   * A caller done with a record gives its data back with `releaseBuffer` (common/buffer-pool):
   * records served from memory share pooled buffers with the cache; for the others it is a no-op.
   * With `into`, records read from the segment files land there, one after another from its
   * start, while they fit (the read stops before the first that does not; if that is the first
   * record, it comes alone, in its own buffer):
   * a shipper that sends the records' data as one payload then has it without another copy.
   * Such records are valid only until the caller reuses `into`.
   * `maxRecords` bounds the count as well (records without data, UNMAPs, add no bytes: a long
   * run of them would otherwise be read whole, into memory, in one call).
   */
  async readAfter(afterSeq: number, maxBytes: number, untilSeq = this.head, into?: Buffer, maxRecords = Infinity): Promise<JournalRecord[]> {
    const out: JournalRecord[] = [];
    let bytes = 0;
    // Recent records straight from memory, while they follow on without a gap.
    if (afterSeq >= this.oldest - 1) {
      for (let seq = afterSeq + 1; seq <= untilSeq && bytes < maxBytes && out.length < maxRecords; seq++) {
        const r = this.recent.get(seq);
        if (!r) break;
        retainBuffer(r.data);
        out.push(r);
        bytes += r.data.length;
      }
      if (out.length) return out;
    }
    await this.indexed(untilSeq);
    let at = 0;
    scan: for await (const [gk, gv] of this.db.iterator({ gte: seqKey(afterSeq + 1), lt: RECORD_END })) {
      for (const [k, v] of indexEntries(gk, gv)) {
        const d = decodeKey(k);
        if (d.seq <= afterSeq) continue;
        if (d.seq > untilSeq) break scan;
        const len = dataLength(v);
        const fits = !!into && len > 0 && at + len <= into.length;
        // One that does not fit is the next call's, or (the first) comes alone in its own
        // buffer, so that what the caller gets in `into` always starts at its start.
        const alone = !!into && len > 0 && !fits;
        if (alone && out.length) break scan;
        const data = this.dataOf(v, fits ? into!.subarray(at, (at += len)) : undefined);
        try {
          this.checkOnFirstRead(d.seq, k, v, data);
        } catch (e) {
          // The pooled buffers go back; the caller's `into` stays the caller's.
          for (const b of [...out.map((r) => r.data), data]) if (!into || b.buffer !== into.buffer) releaseBuffer(b);
          throw e;
        }
        out.push({ seq: d.seq, timeMs: d.timeMs, volume: this.volumes[d.vol], op: d.op, offsetBytes: d.offsetBytes, lengthBytes: d.lengthBytes, data });
        bytes += data.length;
        if (bytes >= maxBytes || alone || out.length >= maxRecords) break scan;
      }
    }
    // The iterator reads a snapshot of the index: a record trimmed or folded since (between
    // its steps) may have had its segment file recycled before it was read. Trimming goes
    // oldest first, so a first record still retained now means all of them were throughout.
    if (out.length && out[0].seq < this.oldest) {
      for (const r of out) releaseBuffer(r.data);
      throw new JournalError(JournalErrorCode.Sequence, `records ${out[0].seq}..${out[out.length - 1].seq} were trimmed while being read (oldest now ${this.oldest})`);
    }
    return out;
  }

  /** Every retained record in (afterSeq, untilSeq] for one volume (or all), streamed in order. */
  async *records(afterSeq: number, untilSeq: number, volume?: string): AsyncGenerator<JournalRecord> {
    const vol = volume === undefined ? undefined : this.volumeIndex.get(volume);
    if (volume !== undefined && vol === undefined) return;
    await this.indexed(untilSeq);
    for await (const [gk, gv] of this.db.iterator({ gte: seqKey(afterSeq + 1), lt: RECORD_END })) {
      for (const [k, v] of indexEntries(gk, gv)) {
        const d = decodeKey(k);
        if (d.seq <= afterSeq || (vol !== undefined && d.vol !== vol)) continue;
        if (d.seq > untilSeq) return;
        const data = this.dataOf(v);
        try {
          this.checkOnFirstRead(d.seq, k, v, data);
        } catch (e) {
          releaseBuffer(data);
          throw e;
        }
        yield { seq: d.seq, timeMs: d.timeMs, volume: this.volumes[d.vol], op: d.op, offsetBytes: d.offsetBytes, lengthBytes: d.lengthBytes, data };
      }
    }
  }

  /** A record's data, read into `into` (exactly its length) or a pooled buffer. */
  private dataOf(ptr: Buffer, into?: Buffer): Buffer {
    const len = dataLength(ptr);
    if (!len) return EMPTY_DATA;
    return into ? this.segments.readInto(ptr.readUInt32BE(0), r64(ptr, 4), into) : this.segments.read(ptr.readUInt32BE(0), r64(ptr, 4), len);
  }

  /** The images hold every record ≤ seq durably (after their fsync). */
  async checkpoint(seq: number): Promise<void> {
    // Never past the index: trimming works on index entries, which must all be there.
    await this.indexed(seq);
    seq = Math.min(seq, this.writtenSeq);
    if (seq <= this.imageSeq) return;
    // The synced point goes with the checkpoint: the records it covers are synced first, so
    // that the journal's copy of what the images hold is durable too (the history replays it)
    // and the point put beside the checkpoint is true.
    if (seq > this.syncedSeq) await this.sync();
    this.imageSeq = seq;
    await this.putCheckpoint();
  }

  /**
   * The checkpoint, with the synced point when it moved and `also` (a trim's index deletes): one
   * LevelDB write either way, synced when `sync`.
   */
  private async putCheckpoint(also: readonly LevelOp[] = [], sync = false): Promise<void> {
    const droppedSeq = this.droppedSeq > this.imageSeq ? this.droppedSeq : undefined;
    const value = Buffer.from(JSON.stringify({ imageSeq: this.imageSeq, droppedSeq }));
    const mark = this.syncedSeq;
    if (mark === this.markedSeq && !also.length) return this.db.put(META_CHECKPOINT, value, { sync });
    const ops: LevelOp[] = [...also, { type: 'put', key: META_CHECKPOINT, value }];
    if (mark !== this.markedSeq) ops.push(syncedPut(mark));
    const put = this.db.batch(ops, { sync });
    if (mark !== this.markedSeq) this.marking = Promise.all([this.marking, put.catch(() => undefined)]);
    await put;
    if (mark > this.markedSeq) this.markedSeq = mark;
  }

  /**
   * Lower the synced point to `seq` (and put it, synced) before records after it are zeroed
   * or dropped: a crash after that leaves them, at worst, as a torn tail the next start cuts,
   * never as corrupt synced records it refuses.
   */
  private async lowerSyncedPoint(seq: number): Promise<void> {
    if (this.syncedSeq > seq) this.syncedSeq = seq;
    // An index batch or a checkpoint under way may carry the point from before: it lands first.
    while (this.writing) await this.writing;
    await this.marking;
    await this.db.put(META_SYNCED, syncedPut(this.syncedSeq).value, { sync: true });
    this.markedSeq = this.syncedSeq;
  }

  /**
   * Every record ≤ seq is in its image, maybe only in the page cache: records no FUA write
   * needs may be trimmed from now on without waiting for a checkpoint (see the file's comment).
   * Callers of sync() on such a journal fsync the images too (a flush does), as records
   * trimmed this way are on disk only once their images are.
   */
  inImages(seq: number): void {
    if (seq > this.inImagesSeq) this.inImagesSeq = seq;
  }

  /** The newest FUA record (it needs a checkpoint before it may leave the journal). */
  lastFuaSeq(): number {
    return this.fuaSeq;
  }

  replicaAcked(seq: number): void {
    if (seq > this.ackedSeq) this.ackedSeq = seq;
    // Usually shipped() let these go already; not the records an image sync covered instead.
    this.recent.dropThrough(seq);
  }

  /**
   * The shipper has sent everything ≤ seq (it ships copies): the cache lets those records go.
   * Kept until acknowledged, they pushed the records not yet sent out of the cache while a slow
   * replica held a window's worth unacknowledged, and the shipper read those back from disk.
   */
  shipped(seq: number): void {
    this.recent.dropThrough(seq);
  }

  get replicaAckedSeq(): number {
    return this.ackedSeq;
  }

  /** A history window is configured (`--journal-retain`): trimmed records fold into base images. */
  get keepsHistory(): boolean {
    return !!(this.opts.retainMs || this.opts.retainBytes);
  }

  /** The point-in-time base (state right after `seq`), when history is kept. */
  /** Base images are stored (a fold or a rebase wrote them), not the implicit empty volumes before seq 1. */
  get hasStoredBase(): boolean {
    return this.base !== undefined;
  }

  /** History was given up (a reset) and waits for a rebase to start again. */
  get awaitsBase(): boolean {
    return this.noBase;
  }

  baseInfo(): { seq: number; timeMs: number } | undefined {
    if (this.base) return this.base;
    if (this.noBase) return undefined;
    // Nothing ever trimmed, every volume created under this journal (a volume that held data
    // before, or a trim without history, set noBase): the base is the empty volume before seq 1.
    if (this.keepsHistory) return this.oldest === 1 ? { seq: 0, timeMs: 0 } : undefined;
    return undefined;
  }

  baseImagePath(volume: string): string {
    return path.join(this.opts.dir, 'base', `${volume}.img`);
  }

  /**
   * Retained window for replay: from the base (or only the latest state) to the head. Once every
   * record is folded (an idle volume with history on) the head is the base: its time is the
   * base's, not unknown (which refused every --time).
   */
  window(): { fromSeq: number; toSeq: number; fromTimeMs?: number; toTimeMs?: number } {
    const base = this.baseInfo();
    let toTimeMs = this.head ? this.timeOf(this.head) : undefined;
    if (toTimeMs === undefined && base && base.seq === this.head && base.timeMs) toTimeMs = base.timeMs;
    if (!base) return { fromSeq: this.head, toSeq: this.head, fromTimeMs: toTimeMs, toTimeMs };
    // A fold cut short: the base images may hold any state up to its end, the first point left.
    if (this.foldTo !== undefined && this.foldTo > base.seq) return { fromSeq: this.foldTo, toSeq: this.head, fromTimeMs: this.timeOf(this.foldTo) ?? base.timeMs, toTimeMs };
    return { fromSeq: base.seq, toSeq: this.head, fromTimeMs: base.seq === 0 ? (this.timeOf(this.oldest) ?? toTimeMs) : base.timeMs, toTimeMs };
  }

  /**
   * A replica stores a coalesced batch (the primary shipped only the newest version of blocks
   * overwritten inside it): the points from its first missing sequence number up to the one
   * before its last are no state the primary ever had, and replay must not offer them.
   * Written (and synced) before the batch's records, so no such point is ever replayable
   * unmarked.
   */
  async markCoalesced(firstMissing: number, toSeq: number): Promise<void> {
    if (firstMissing >= toSeq) return;
    const v = Buffer.alloc(8);
    u64(v, 0, firstMissing);
    await this.db.put(gapKey(toSeq), v, { sync: true });
  }

  /**
   * Forget the marks of batches ending after `seq`: a store that marked a batch and then failed
   * (or was killed) before its records were appended leaves a mark for records never stored; the
   * batch sent again in its place may reach further back, and its own mark must not be shadowed.
   */
  async forgetCoalescedAfter(seq: number): Promise<void> {
    await this.db.clear({ gt: gapKey(seq), lt: GAP_END });
  }

  /** The coalesced batch `seq` lies inside (no replayable point), if any: its points from..to-1, to being its end. */
  async coalescedAround(seq: number): Promise<{ from: number; to: number } | undefined> {
    for await (const [k, v] of this.db.iterator({ gt: gapKey(seq), lt: GAP_END, limit: 1 })) {
      const from = r64(v, 0);
      const to = r64(k, 1);
      return from <= seq ? { from, to } : undefined;
    }
    return undefined;
  }

  /**
   * A replica's coalesced batch that a crash (or a failed store) cut short: its first records
   * alone are no state the primary had, and a start must not replay them onto the volumes. They
   * go, with the batch's mark; the primary sends the batch again from the sequence before it.
   */
  async cutPartialCoalesced(): Promise<{ from: number; to: number; records: number } | undefined> {
    const around = await this.coalescedAround(this.head);
    if (!around) return undefined;
    const records = await this.truncateAfter(around.from - 1);
    await this.forgetCoalescedAfter(around.from - 1);
    return { ...around, records };
  }

  /** Every coalesced batch still marked, oldest first (`offsite journal inspect`). */
  async coalescedBatches(): Promise<{ from: number; to: number }[]> {
    const out: { from: number; to: number }[] = [];
    for await (const [k, v] of this.db.iterator({ gte: gapKey(0), lt: GAP_END })) out.push({ from: r64(v, 0), to: r64(k, 1) });
    return out;
  }

  /** The latest point at or before `seq` that replay can produce (the start of a coalesced batch it lies inside moves it back). */
  async consistentAtOrBefore(seq: number): Promise<number> {
    const around = await this.coalescedAround(seq);
    return around ? around.from - 1 : seq;
  }

  /** Small named entries beside the records ('k' keys: bookmarks.ts), all of them. */
  async *namedEntries(): AsyncGenerator<[string, Buffer]> {
    for await (const [k, v] of this.db.iterator({ gte: NAMED_PREFIX, lt: NAMED_END })) yield [k.subarray(1).toString('utf8'), v];
  }

  /** Write (synced) or, without a value, remove a named entry. */
  async putNamed(name: string, value?: Buffer): Promise<void> {
    const key = Buffer.concat([NAMED_PREFIX, Buffer.from(name, 'utf8')]);
    if (value) await this.db.put(key, value, { sync: true });
    else await this.db.del(key, { sync: true });
  }

  /**
   * The retained records by the primary's time, in buckets of `bucketMs` (only those holding
   * records), from the bookkeeping kept in memory: no I/O.
   */
  history(bucketMs: number): HistoryBucket[] {
    const out: HistoryBucket[] = [];
    let cur: HistoryBucket | undefined;
    for (let i = 0; i < this.sizes.size; i++) {
      const t = this.sizes.timeAt(i);
      const start = Math.floor(t / bucketMs) * bucketMs;
      const seq = this.sizes.seqAt(i);
      if (!cur || cur.startMs !== start) out.push((cur = { startMs: start, firstSeq: seq, lastSeq: seq, records: 0, bytes: 0, perVolume: {} }));
      const bytes = this.sizes.bytesAt(i);
      const vol = this.volumes[this.sizes.volAt(i)];
      cur.lastSeq = seq;
      cur.records++;
      cur.bytes += bytes;
      cur.perVolume[vol] = (cur.perVolume[vol] ?? 0) + bytes;
    }
    return out;
  }

  /**
   * Run `fn` while the history stays put: no trim, no fold into the base (a trim under way
   * finishes first). For readers of the base and the records that take a while.
   */
  async holdHistory<T>(fn: () => Promise<T>): Promise<T> {
    this.historyHolds++;
    try {
      if (this.trimming) await this.trimming.catch(() => undefined);
      return await fn();
    } finally {
      this.historyHolds--;
    }
  }

  /**
   * Remove records that no longer need to be kept. With history on, they are applied to the
   * base images first (via `baseFor`). Runs one at a time; safe to call often.
   */
  trim(baseFor?: (volume: string, sizeBytes?: number) => Promise<RecordTarget>): Promise<void> {
    this.trimming ??= this.trimNow(baseFor).finally(() => {
      this.trimming = undefined;
    });
    return this.trimming;
  }

  private async trimNow(baseFor?: (volume: string) => Promise<RecordTarget>): Promise<void> {
    // The history is being read: the next trim catches up (the cap may be passed meanwhile).
    if (this.historyHolds) return;
    const o = this.opts;
    // Trimming works on index entries: they must all be there.
    if (this.inImagesSeq > this.writtenSeq) await this.indexed(this.inImagesSeq);
    // Not past the checkpoint while an FUA record is after it (trimming keeps a prefix).
    const imageLimit = this.fuaSeq > this.imageSeq ? this.imageSeq : Math.max(this.imageSeq, Math.min(this.inImagesSeq, this.writtenSeq));
    let limit = imageLimit;
    if (o.replicated) limit = Math.min(limit, this.ackedSeq);
    const history = this.keepsHistory;
    let historyLimit = limit;
    if (history) {
      const now = performance.now();
      let keepBytes = 0;
      // Walk back from the newest retained record while inside the window.
      let i = this.sizes.size - 1;
      for (; i >= 0; i--) {
        const bytes = this.sizes.bytesAt(i);
        const inTime = o.retainMs ? now - this.sizes.monoAt(i) <= o.retainMs : false;
        const inBytes = o.retainBytes ? keepBytes + bytes <= o.retainBytes : false;
        if (!inTime && !inBytes) break;
        keepBytes += bytes;
      }
      historyLimit = Math.min(limit, i >= 0 ? this.sizes.seqAt(i) : this.oldest - 1);
    }
    let upTo = historyLimit;
    // Counted and logged once the records are gone (status and metrics agree at every moment).
    let folding: { n: number; unshipped: number; capLimit: number } | undefined;
    const over = o.maxBytes !== undefined && this.totalBytes > o.maxBytes;
    if (over) {
      // The cap wins over history and over a replica that is behind (never over the images):
      // fold the oldest. Records the replica never got are then brought over as a delta sync of
      // the changed blocks (bounded by the volume size), staged whole at the replica.
      let bytes = this.totalBytes;
      let i = 0;
      while (i < this.sizes.size && bytes > o.maxBytes! * 0.9 && this.sizes.seqAt(i) <= imageLimit) bytes -= this.sizes.bytesAt(i++);
      const capLimit = i > 0 ? this.sizes.seqAt(i - 1) : this.oldest - 1;
      if (capLimit > upTo) {
        const n = this.countBetween(upTo, capLimit);
        const unshipped = o.replicated && capLimit > this.ackedSeq ? this.countBetween(Math.max(upTo, this.ackedSeq), capLimit) : 0;
        folding = { n, unshipped, capLimit };
        upTo = capLimit;
      }
    }
    const base = history && baseFor ? this.baseInfo() : undefined;
    // A fold cut short is finished first: its records are still here (they go only once it is recorded).
    if (base && this.foldTo !== undefined) upTo = Math.max(upTo, this.foldTo);
    if (upTo < this.oldest) return;
    if (base) {
      if (upTo > base.seq) await this.fold(base, upTo, baseFor!);
    } else if (!this.noBase) {
      // Records leave without reaching a base: no base (stored, or the empty volumes) goes
      // with what is left, and history, when turned on (again), restarts with a rebase.
      await this.dropHistory();
    }
    await this.dropRecords(upTo);
    if (folding) this.countFold(folding.n, folding.unshipped, folding.capLimit);
  }

  private countFold(n: number, unshipped: number, throughSeq: number): void {
    const o = this.opts;
    this.counters.folded += n;
    this.counters.foldedUnshipped += unshipped;
    const now = Date.now();
    if (now - this.lastFoldLog > 10_000 || (unshipped && !this.loggedUnshipped)) {
      this.lastFoldLog = now;
      this.loggedUnshipped = unshipped > 0;
      this.opts.logger?.warn(
        { folded: n, foldedTotal: this.counters.folded, unshipped, replicaAckedSeq: o.replicated ? this.ackedSeq : undefined, throughSeq, journalBytes: this.totalBytes, maxBytes: o.maxBytes },
        unshipped
          ? 'journal over its cap with the replica behind: oldest records folded, including records the replica never got (it will be brought over by a delta sync of the changed blocks)'
          : 'journal over its cap: oldest records folded into the base (points before them are no longer replayable)',
      );
    }
  }

  /**
   * Apply the records (base.seq, upTo] to the base images. The fold is recorded as under way
   * (synced) before the first base write and as done (the new base) after the images are
   * synced, and its records are dropped only after that: a crash or a failed write in between
   * leaves the base images anywhere between the two states, and the next fold re-applies
   * (base.seq, upTo] from the start. That is idempotent: every record sets its range to content
   * it carries whole (a write's bytes, a WRITE SAME block repeated, zeros for UNMAP), so applying
   * them in order over any such mix ends at the state after upTo.
   */
  private async fold(base: { seq: number; timeMs: number }, upTo: number, baseFor: (volume: string) => Promise<RecordTarget>): Promise<void> {
    if (this.foldTo === undefined || this.foldTo < upTo) {
      await this.db.put(META_FOLD, Buffer.from(JSON.stringify({ toSeq: upTo })), { sync: true });
      this.foldTo = upTo;
    }
    const targets = new Map<string, RecordTarget>();
    let lastTime = 0;
    // Records at or before the base (kept by a primary's rebase) are in it already.
    for await (const rec of this.records(Math.max(this.oldest - 1, base.seq), upTo)) {
      let t = targets.get(rec.volume);
      if (!t) targets.set(rec.volume, (t = await baseFor(rec.volume)));
      await t.apply(rec);
      lastTime = rec.timeMs;
    }
    for (const t of targets.values()) await (t as RecordTarget & { sync?(): Promise<void> }).sync?.();
    const done = { seq: upTo, timeMs: lastTime || Date.now() };
    // Synced: the records' segment files may be deleted right after, outside LevelDB's log order.
    await this.db.batch([
      { type: 'put', key: META_BASE, value: Buffer.from(JSON.stringify(done)) },
      { type: 'del', key: META_FOLD },
    ], { sync: true });
    this.base = done;
    this.foldTo = undefined;
  }

  /**
   * Drop the records ≤ upTo: their index entries, the replica's batches ending by then and the
   * checkpoint (where the sequence goes on once nothing is left) go in one LevelDB write, then the
   * segment files holding only dropped records are deleted or kept as spares (reused for new
   * records under a new number). That write is synced when a file goes: else a power loss could
   * bring LevelDB back with entries naming records in a file that is gone or holds other
   * records, and its start would lose the synced records written since (scan).
   */
  private async dropRecords(upTo: number): Promise<void> {
    // With the entries' deletes: a start after a crash must know where the sequence goes on.
    if (upTo > this.imageSeq && upTo > this.droppedSeq) this.droppedSeq = upTo;
    const ops: LevelOp[] = [];
    for await (const key of this.db.keys({ gte: seqKey(this.oldest), lt: seqKey(upTo + 1) })) ops.push({ type: 'del', key });
    // Batches that ended by upTo hold no point the window still has.
    for await (const key of this.db.keys({ gte: gapKey(0), lt: gapKey(upTo + 1) })) ops.push({ type: 'del', key });
    // The group holding upTo + 1 may begin with dropped records: keep only the rest of it (its
    // segments may go now).
    for await (const [gk, gv] of this.db.iterator({ gte: seqKey(upTo + 1), lt: RECORD_END, limit: 1 })) {
      if (gk.length === KEY_LEN) break;
      let at = 0;
      while (at < gv.length && r64(gv, at + 1) <= upTo) at += ENTRY_BYTES;
      if (at > 0) ops.push({ type: 'put', key: Buffer.from(gk), value: Buffer.from(gv.subarray(at)) });
    }
    // Synced only when a file goes: once per freed segment, not at every trim (the keeper's run every second).
    const files = this.segments.droppable(upTo, new Set(this.batches.map((b) => b.segment)));
    await this.putCheckpoint(ops, files.length > 0);
    this.segments.drop(files);
    let n = 0;
    while (this.sizes.size && this.sizes.seqAt(0) <= upTo) {
      const bytes = this.sizes.bytesAt(0);
      const pv = this.perVolume.get(this.sizes.volAt(0))!;
      this.sizes.shift();
      this.totalBytes -= bytes;
      pv.records--;
      pv.bytes -= bytes;
      n++;
    }
    this.counters.trimmed += n;
    this.oldest = upTo + 1;
  }

  private countBetween(afterSeq: number, toSeq: number): number {
    let n = 0;
    for (let i = this.sizes.firstAfter(afterSeq); i < this.sizes.size && this.sizes.seqAt(i) <= toSeq; i++) n++;
    return n;
  }

  stats(): JournalStats {
    const perVolume: JournalStats['perVolume'] = {};
    this.perVolume.forEach((v, k) => {
      // Not a volume the list lost (its records, found at a start, were cut or refused it).
      if (k < this.volumes.length) perVolume[this.volumes[k]] = { records: v.records, bytes: v.bytes };
    });
    const base = this.baseInfo();
    return {
      headSeq: this.head,
      oldestSeq: this.oldest,
      records: this.sizes.size,
      bytes: this.totalBytes,
      perVolume,
      ...this.counters,
      imageSeq: this.imageSeq,
      replicaAckedSeq: this.ackedSeq,
      baseSeq: base?.seq,
      baseTimeMs: base?.timeMs,
      oldestTimeMs: this.sizes.size ? this.sizes.timeAt(0) : undefined,
      drainAppendLatencies: () => this.latencies.splice(0),
      drainBatchSizes: () => this.batchSizes.splice(0),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.drained();
    await this.indexed(Number.MAX_SAFE_INTEGER);
    if (this.trimming) await this.trimming.catch(() => undefined);
    this.closed = true;
    await this.segments.sync();
    this.segments.close();
    await this.db.close();
  }
}

/** A sparse image file as a RecordTarget (base images, replay output). */
export class ImageFileTarget implements RecordTarget {
  private constructor(private readonly fh: FileHandle, readonly blockSize: number) {}

  static async open(file: string, sizeBytes: number, create: boolean, blockSize = 512): Promise<ImageFileTarget> {
    await mkdir(path.dirname(file), { recursive: true });
    const fh = await open(file, create ? 'a+' : 'r+');
    await fh.close();
    const rw = await open(file, 'r+');
    const st = await rw.stat();
    if (st.size !== sizeBytes) await rw.truncate(sizeBytes);
    return new ImageFileTarget(rw, blockSize);
  }

  async apply(rec: JournalRecord): Promise<void> {
    await applyRecord(this.fh, rec);
  }

  async sync(): Promise<void> {
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Write one record's effect onto a file (idempotent: records carry full data). */
export function applyRecord(fh: FileHandle, rec: JournalRecord): Promise<void> {
  return applyRecordPart(rec, rec.offsetBytes, rec.lengthBytes, async (offsetBytes, data) => {
    await fh.write(data, 0, data.length, offsetBytes);
  });
}

/**
 * The part [offsetBytes, +lengthBytes) of a record (inside its range; for WRITE SAME, on a
 * block boundary), through `write`: a write's bytes, a WRITE SAME's block repeated, or zeros.
 */
export async function applyRecordPart(rec: JournalRecord, offsetBytes: number, lengthBytes: number, write: (offsetBytes: number, data: Buffer) => Promise<void>): Promise<void> {
  if (rec.op === 'write') {
    const at = offsetBytes - rec.offsetBytes;
    await write(offsetBytes, at === 0 && lengthBytes === rec.data.length ? rec.data : rec.data.subarray(at, at + lengthBytes));
    return;
  }
  const chunk = 1024 * 1024;
  let fill: Buffer;
  if (rec.op === 'unmap') fill = Buffer.alloc(Math.min(chunk, lengthBytes));
  else {
    const n = Math.max(1, Math.floor(Math.min(chunk, lengthBytes) / rec.data.length));
    fill = Buffer.alloc(n * rec.data.length);
    for (let o = 0; o < fill.length; o += rec.data.length) rec.data.copy(fill, o);
  }
  for (let o = 0; o < lengthBytes; o += fill.length) await write(offsetBytes + o, fill.subarray(0, Math.min(fill.length, lengthBytes - o)));
}

export async function removeJournal(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** The last retained sequence number written at or before `timeMs` (0 when none). */
export async function seqAtTime(journal: Journal, timeMs: number): Promise<number> {
  return journal.consistentAtOrBefore(journal.lastSeqUpTo(timeMs));
}
