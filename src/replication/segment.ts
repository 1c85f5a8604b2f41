/**
 * Segment codec: a run of consecutive journal records as one frame. Pure.
 *   meta.from / meta.to   first and last sequence number (contiguous)
 *   meta.recs             [[seq, timeMs, volumeIndex, op, offsetBytes, lengthBytes, dataBytes], ...]
 *   meta.vols             volume names referenced by index
 *   payload               the records' data, concatenated in order
 */
import { ReplicationError, ReplicationErrorCode as Code } from './errors';
import type { RecordOp, ReplicatedRecord } from './ports';

const OPS: RecordOp[] = ['write', 'writeSame', 'unmap'];
export const MAX_RECORDS_PER_SEGMENT = 65536;

export interface SegmentMeta {
  [key: string]: unknown;
  from: number;
  to: number;
  vols: string[];
  recs: number[][];
}

export function encodeSegment(records: ReplicatedRecord[]): { meta: SegmentMeta; payload: Buffer } {
  const vols: string[] = [];
  const volIndex = new Map<string, number>();
  const recs: number[][] = [];
  const datas: Buffer[] = [];
  let dataBytes = 0;
  for (const r of records) {
    let vi = volIndex.get(r.volume);
    if (vi === undefined) {
      vi = vols.length;
      vols.push(r.volume);
      volIndex.set(r.volume, vi);
    }
    const n = r.data?.length ?? 0;
    recs.push([r.seq, r.timeMs, vi, OPS.indexOf(r.op), r.offsetBytes, r.lengthBytes, n]);
    if (n) {
      datas.push(r.data!);
      dataBytes += n;
    }
  }
  const payload = datas.length === 1 ? datas[0] : Buffer.concat(datas, dataBytes);
  return { meta: { from: records[0].seq, to: records[records.length - 1].seq, vols, recs }, payload };
}

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Decode and validate; any inconsistency is a typed error (the frame is never applied). */
export function decodeSegment(meta: Record<string, unknown>, payload: Buffer): ReplicatedRecord[] {
  const bad = (why: string) => new ReplicationError(Code.FrameMeta, `invalid segment: ${why}`);
  const { from, to, vols, recs } = meta as Partial<SegmentMeta>;
  if (!isUint(from) || !isUint(to) || to < from) throw bad(`from/to ${String(from)}..${String(to)}`);
  if (!Array.isArray(vols) || !vols.every((v) => typeof v === 'string')) throw bad('vols');
  if (!Array.isArray(recs) || recs.length !== to - from + 1 || recs.length > MAX_RECORDS_PER_SEGMENT) throw bad(`record count ${Array.isArray(recs) ? recs.length : '?'} for ${from}..${to}`);
  const out: ReplicatedRecord[] = [];
  let pos = 0;
  for (let i = 0; i < recs.length; i++) {
    const r = recs[i];
    if (!Array.isArray(r) || r.length !== 7 || !r.every(isUint)) throw bad(`record ${i} shape`);
    const [seq, timeMs, vi, opIndex, offsetBytes, lengthBytes, dataBytes] = r;
    if (seq !== from + i) throw bad(`record ${i} has seq ${seq}, expected ${from + i}`);
    if (vi >= vols.length || opIndex >= OPS.length) throw bad(`record ${seq} volume/op index`);
    const op = OPS[opIndex];
    if (op === 'write' && dataBytes !== lengthBytes) throw bad(`write ${seq} carries ${dataBytes} bytes for ${lengthBytes}`);
    if (op === 'unmap' && dataBytes !== 0) throw bad(`unmap ${seq} carries data`);
    if (op === 'writeSame' && (dataBytes === 0 || lengthBytes % dataBytes !== 0)) throw bad(`writeSame ${seq} pattern of ${dataBytes} bytes for ${lengthBytes}`);
    if (pos + dataBytes > payload.length) throw bad(`record ${seq} data past the payload end`);
    out.push({ seq, timeMs, volume: vols[vi], op, offsetBytes, lengthBytes, data: dataBytes ? payload.subarray(pos, pos + dataBytes) : undefined });
    pos += dataBytes;
  }
  if (pos !== payload.length) throw bad(`${payload.length - pos} trailing payload bytes`);
  return out;
}
