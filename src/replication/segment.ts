/**
 * Segment codec: a run of consecutive journal records as one frame. Pure.
 *   meta.from / meta.to   first and last sequence number (contiguous)
 *   meta.vols             volume names referenced by index
 *   the record table, one of:
 *     meta.table          binary, TABLE_ENTRY_BYTES per record, little-endian:
 *                           0 u32 seq - from | 4 u16 volumeIndex | 6 u8 op | 7 u8 0
 *                           8 f64 timeMs | 16 f64 offsetBytes | 24 f64 lengthBytes
 *                          32 u32 dataBytes | 36 u32 0
 *                         (sent to replicas that announce `segmentTable` in their HelloAck)
 *     meta.recs           [[seq, timeMs, volumeIndex, op, offsetBytes, lengthBytes, dataBytes], ...]
 *                         (msgpack arrays: what every replica reads; 256 small arrays per
 *                         segment of 4K writes to pack, unpack and collect)
 *   payload               the records' data, concatenated in order
 * A segment carries at most maxRecordsPerSegment records, so its meta always fits in a frame.
 */
import { ReplicationError, ReplicationErrorCode as Code } from './errors';
import type { RecordOp, ReplicatedRecord } from './ports';
import { MAX_META_BYTES } from './protocol';

const OPS: RecordOp[] = ['write', 'writeSame', 'unmap'];
export const MAX_RECORDS_PER_SEGMENT = 65536;
export const TABLE_ENTRY_BYTES = 40;
/** meta.recs: an entry at most (a fixarray header and seven unsigned integers, each at most 9 bytes packed: uint64). */
export const RECS_ENTRY_MAX_BYTES = 1 + 7 * 9;
/**
 * Meta bytes kept for all but the record table: from, to, the flags and the volume names (63
 * characters at most, 65 bytes packed: this leaves room for some 2000 distinct volumes).
 */
const META_SLACK_BYTES = 128 * 1024;

/**
 * Records one segment may carry so that its meta always fits in a frame (MAX_META_BYTES) and
 * the replica's decoder takes it (MAX_RECORDS_PER_SEGMENT). The data bytes alone do not bound
 * it: a run of UNMAPs carries no data, and a coalescing read of 512-byte writes is 32768
 * records; a segment over the limit could never be sent, and each new session built it again.
 */
export function maxRecordsPerSegment(opts: { table?: boolean } = {}): number {
  const entry = opts.table ? TABLE_ENTRY_BYTES : RECS_ENTRY_MAX_BYTES;
  return Math.min(MAX_RECORDS_PER_SEGMENT, Math.floor((MAX_META_BYTES - META_SLACK_BYTES) / entry));
}

export interface SegmentMeta {
  [key: string]: unknown;
  from: number;
  to: number;
  vols: string[];
  recs?: number[][];
  table?: Buffer;
}

/**
 * Drop every record whose whole range is overwritten by later records of the same batch (on
 * the same volume). Applied whole, the rest lands on the same state as all of them.
 */
export function coalesce(records: ReplicatedRecord[]): { kept: ReplicatedRecord[]; savedBytes: number } {
  const covered = new Map<string, [number, number][]>();
  const keep: boolean[] = new Array(records.length);
  let savedBytes = 0;
  for (let i = records.length - 1; i >= 0; i--) {
    const r = records[i];
    let ranges = covered.get(r.volume);
    if (!ranges) covered.set(r.volume, (ranges = []));
    const start = r.offsetBytes;
    const end = r.offsetBytes + r.lengthBytes;
    if (i < records.length - 1 && isCovered(ranges, start, end)) {
      keep[i] = false;
      savedBytes += r.data?.length ?? 0;
      continue;
    }
    keep[i] = true;
    addRange(ranges, start, end);
  }
  return { kept: records.filter((_, i) => keep[i]), savedBytes };
}

/** Sorted, disjoint ranges. */
function isCovered(ranges: [number, number][], start: number, end: number): boolean {
  for (const [s, e] of ranges) {
    if (s > start) return false;
    if (e >= end) return true;
  }
  return false;
}

function addRange(ranges: [number, number][], start: number, end: number): void {
  let i = 0;
  while (i < ranges.length && ranges[i][1] < start) i++;
  let s = start;
  let e = end;
  let j = i;
  while (j < ranges.length && ranges[j][0] <= e) {
    s = Math.min(s, ranges[j][0]);
    e = Math.max(e, ranges[j][1]);
    j++;
  }
  ranges.splice(i, j - i, [s, e]);
}

/**
 * `scratch(n)`, when given, supplies the memory the payload is gathered into (the shipper reuses
 * one buffer: the payload is then only valid until the next call, see encodeFrame's `transient`).
 * `opts.table`: the record table in binary (meta.table) rather than msgpack arrays (meta.recs).
 */
export function encodeSegment(records: ReplicatedRecord[], range?: { from: number; to: number }, scratch?: (bytes: number) => Buffer, opts: { table?: boolean } = {}): { meta: SegmentMeta; payload: Buffer } {
  const vols: string[] = [];
  const volIndex = new Map<string, number>();
  const from = range?.from ?? records[0].seq;
  const recs: number[][] | undefined = opts.table ? undefined : [];
  const table = opts.table ? Buffer.alloc(records.length * TABLE_ENTRY_BYTES) : undefined;
  const datas: Buffer[] = [];
  let dataBytes = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    let vi = volIndex.get(r.volume);
    if (vi === undefined) {
      vi = vols.length;
      vols.push(r.volume);
      volIndex.set(r.volume, vi);
    }
    const n = r.data?.length ?? 0;
    if (table) {
      const at = i * TABLE_ENTRY_BYTES;
      table.writeUInt32LE(r.seq - from, at);
      table.writeUInt16LE(vi, at + 4);
      table[at + 6] = OPS.indexOf(r.op);
      table.writeDoubleLE(r.timeMs, at + 8);
      table.writeDoubleLE(r.offsetBytes, at + 16);
      table.writeDoubleLE(r.lengthBytes, at + 24);
      table.writeUInt32LE(n, at + 32);
    } else recs!.push([r.seq, r.timeMs, vi, OPS.indexOf(r.op), r.offsetBytes, r.lengthBytes, n]);
    if (n) {
      datas.push(r.data!);
      dataBytes += n;
    }
  }
  // Always a copy: the records' buffers go back to their pool once this returns, while the
  // payload may still wait in the socket's queue.
  let payload: Buffer;
  if (scratch) {
    payload = scratch(dataBytes);
    // Already there when the source read the records into this memory (ShipperSource.readAfter's
    // `into`). Data elsewhere in it would be overwritten while being gathered: fresh memory then.
    if (!laidOut(datas, payload)) {
      if (datas.some((d) => d.buffer === payload.buffer)) payload = Buffer.concat(datas, dataBytes);
      else {
        let at = 0;
        for (const d of datas) at += d.copy(payload, at);
      }
    }
  } else {
    payload = Buffer.concat(datas, dataBytes);
  }
  const meta: SegmentMeta = { from, to: range?.to ?? records[records.length - 1].seq, vols };
  if (table) meta.table = table;
  else meta.recs = recs;
  if (records.length !== meta.to - meta.from + 1) meta.coalesced = true;
  return { meta, payload };
}

/** Whether the data lie one after another in `payload`'s memory, from its start. */
function laidOut(datas: Buffer[], payload: Buffer): boolean {
  let at = payload.byteOffset;
  for (const d of datas) {
    if (d.buffer !== payload.buffer || d.byteOffset !== at) return false;
    at += d.length;
  }
  return true;
}

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Decode and validate; any inconsistency is a typed error (the frame is never applied). */
export function decodeSegment(meta: Record<string, unknown>, payload: Buffer): ReplicatedRecord[] {
  const bad = (why: string) => new ReplicationError(Code.FrameMeta, `invalid segment: ${why}`);
  const { from, to, vols, recs, table } = meta as Partial<SegmentMeta>;
  const coalesced = meta.coalesced === true;
  if (!isUint(from) || !isUint(to) || to < from) throw bad(`from/to ${String(from)}..${String(to)}`);
  if (!Array.isArray(vols) || !vols.every((v) => typeof v === 'string')) throw bad('vols');
  if ((recs === undefined) === (table === undefined)) throw bad('needs exactly one of recs and table');
  let count: number | undefined;
  if (table !== undefined) {
    if (!(table instanceof Uint8Array) || table.length % TABLE_ENTRY_BYTES !== 0) throw bad(`table of ${table instanceof Uint8Array ? table.length : typeof table} bytes`);
    count = table.length / TABLE_ENTRY_BYTES;
  } else if (Array.isArray(recs)) count = recs.length;
  const countOk = count !== undefined && count > 0 && (coalesced ? count <= to - from + 1 : count === to - from + 1);
  if (!countOk || count! > MAX_RECORDS_PER_SEGMENT) throw bad(`record count ${count ?? '?'} for ${from}..${to}`);
  const out: ReplicatedRecord[] = [];
  let pos = 0;
  let prev = -1;
  /** One row of the table, checked against the segment and the rows before it. */
  const add = (i: number, seq: number, timeMs: number, vi: number, opIndex: number, offsetBytes: number, lengthBytes: number, dataBytes: number): void => {
    if (coalesced ? seq < from || seq > to || (i > 0 && seq <= prev) || (i === count! - 1 && seq !== to) : seq !== from + i) {
      throw bad(`record ${i} has seq ${seq}, out of order in ${from}..${to}`);
    }
    if (!isUint(timeMs) || !isUint(offsetBytes) || !isUint(lengthBytes)) throw bad(`record ${seq} time/offset/length`);
    if (vi >= vols.length || opIndex >= OPS.length) throw bad(`record ${seq} volume/op index`);
    const op = OPS[opIndex];
    if (op === 'write' && dataBytes !== lengthBytes) throw bad(`write ${seq} carries ${dataBytes} bytes for ${lengthBytes}`);
    if (op === 'unmap' && dataBytes !== 0) throw bad(`unmap ${seq} carries data`);
    if (op === 'writeSame' && (dataBytes === 0 || lengthBytes % dataBytes !== 0)) throw bad(`writeSame ${seq} pattern of ${dataBytes} bytes for ${lengthBytes}`);
    if (pos + dataBytes > payload.length) throw bad(`record ${seq} data past the payload end`);
    out.push({ seq, timeMs, volume: vols[vi], op, offsetBytes, lengthBytes, data: dataBytes ? payload.subarray(pos, pos + dataBytes) : undefined });
    pos += dataBytes;
    prev = seq;
  };
  if (table !== undefined) {
    const t = Buffer.from(table.buffer, table.byteOffset, table.length);
    for (let i = 0; i < count!; i++) {
      const at = i * TABLE_ENTRY_BYTES;
      if (t[at + 7] !== 0 || t.readUInt32LE(at + 36) !== 0) throw bad(`record ${i} reserved bytes`);
      add(i, from + t.readUInt32LE(at), t.readDoubleLE(at + 8), t.readUInt16LE(at + 4), t[at + 6], t.readDoubleLE(at + 16), t.readDoubleLE(at + 24), t.readUInt32LE(at + 32));
    }
  } else {
    for (let i = 0; i < count!; i++) {
      const r = recs![i];
      if (!Array.isArray(r) || r.length !== 7 || !r.every(isUint)) throw bad(`record ${i} shape`);
      add(i, r[0], r[1], r[2], r[3], r[4], r[5], r[6]);
    }
  }
  if (pos !== payload.length) throw bad(`${payload.length - pos} trailing payload bytes`);
  return out;
}
