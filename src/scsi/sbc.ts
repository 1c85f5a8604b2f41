/**
 * Block commands (SBC-3 §5): READ/WRITE 6/10/12/16, VERIFY, WRITE AND VERIFY, WRITE SAME,
 * UNMAP, GET LBA STATUS, COMPARE AND WRITE, ORWRITE, PRE-FETCH, SYNCHRONIZE CACHE,
 * READ CAPACITY 10/16. All medium access goes through the LU's `Volume`.
 */
import { Asc, SenseKey, Status } from './constants';
import { cdbLength, fuaBit, protectField, read64, rwLba, rwLength } from './cdb';
import type { Handler } from './env';
import type { LogicalUnit } from './lu';
import type { ScsiResult } from './port';
import { GOOD, SenseError, invalidCdb, invalidParam, lbaOutOfRange, paramListLengthError, writeProtected } from './sense';

/** SBC-3 §4.5: the range [lba, lba+n) must lie inside the medium. */
function checkRange(lu: LogicalUnit, lba: number, n: number): void {
  if (lba + n > lu.blocks || lba > lu.blocks) throw lbaOutOfRange();
}

/** Byte of the TRANSFER LENGTH field (for the sense field pointer). */
function lengthByte(opcode: number): number {
  switch (cdbLength(opcode)) {
    case 6:
      return 4;
    case 10:
      return 7;
    case 12:
      return 6;
    default:
      return 10;
  }
}

/**
 * The whole blocks of data-out a transport delivered for a command that defines `bytes`: when
 * the initiator's expected transfer length is shorter than the CDB's (residual overflow), only
 * what arrived is written (SAM-5 §5.4.2; libiscsi's *Residuals tests).
 */
function deliveredBlocks(lu: LogicalUnit, data: Buffer | undefined, bytes: number): Buffer | undefined {
  if (!data) return undefined;
  const have = Math.min(data.length, bytes);
  const whole = have - (have % lu.blockSize);
  if (whole === 0) return undefined;
  return whole === data.length ? data : data.subarray(0, whole);
}

/** The data-out of a command that needs `bytes` bytes; short data-out is an invalid CDB. */
function needData(data: Buffer | undefined, bytes: number, lengthFieldByte: number): Buffer {
  if (!data || data.length < bytes) throw invalidCdb(lengthFieldByte);
  return data.length === bytes ? data : data.subarray(0, bytes);
}

// ---- READ ---------------------------------------------------------------------------------

/** READ 6/10/12/16 (SBC-3 §5.10-5.13). The hot path: one decode, one volume call. */
export const read: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  const six = cdb[0] === 0x08;
  if (!six && protectField(cdb) !== 0) throw invalidCdb(1, 5); // no protection information
  const lba = rwLba(cdb);
  const n = rwLength(cdb);
  if (n > lu.limits.maxTransferBlocks) throw invalidCdb(lengthByte(cdb[0]));
  checkRange(lu, lba, n);
  if (n === 0) return GOOD;
  const len = n << lu.blockShift;
  const dataIn = await lu.volume.read(lba * lu.blockSize, len);
  env.counters.bytesRead += len;
  return { status: Status.Good, dataIn };
};

// ---- WRITE --------------------------------------------------------------------------------

/** WRITE 6/10/12/16 (SBC-3 §5.31-5.34). FUA (or WCE=0) makes the write durable before GOOD. */
export const write: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  const six = cdb[0] === 0x0a;
  if (!six && protectField(cdb) !== 0) throw invalidCdb(1, 5);
  const lba = rwLba(cdb);
  const n = rwLength(cdb);
  if (n > lu.limits.maxTransferBlocks) throw invalidCdb(lengthByte(cdb[0]));
  checkRange(lu, lba, n);
  if (lu.writeProtected) throw writeProtected();
  if (n === 0) return GOOD;
  const len = n << lu.blockShift;
  const data = deliveredBlocks(lu, req.dataOut, len);
  if (!data) return { status: Status.Good, dataOutLength: len };
  const fua = (!six && fuaBit(cdb)) || !lu.mode.wce;
  const wait = lu.gate.enterShared();
  if (wait) await lu.waitShared(wait, env.itn(req.nexus));
  try {
    await lu.volume.write(lba * lu.blockSize, data, fua ? FUA : undefined);
  } finally {
    lu.gate.exitShared();
  }
  env.counters.bytesWritten += data.length;
  return { status: Status.Good, dataOutLength: len, dataOutDone: true };
};

const FUA = Object.freeze({ fua: true });

/** Write under the shared gate for a task of `itn` (used by the commands below). */
async function gatedWrite(lu: LogicalUnit, itn: string, offset: number, data: Buffer, fua: boolean): Promise<void> {
  const wait = lu.gate.enterShared();
  if (wait) await lu.waitShared(wait, itn);
  try {
    await lu.volume.write(offset, data, fua ? FUA : undefined);
  } finally {
    lu.gate.exitShared();
  }
}

// ---- VERIFY / WRITE AND VERIFY ---------------------------------------------------------------

/** Offset of the first differing byte, or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

function miscompare(offset: number): SenseError {
  return new SenseError(SenseKey.Miscompare, Asc.MiscompareDuringVerify, undefined, offset);
}

/** VERIFY 10/12/16 (SBC-3 §5.25-5.27): BYTCHK 00 medium check, 01 compare, 11 one block against all. */
export const verify: Handler = async (lu, req) => {
  const cdb = req.cdb;
  if (protectField(cdb) !== 0) throw invalidCdb(1, 5);
  const bytchk = (cdb[1] >> 1) & 0x03;
  if (bytchk === 2) throw invalidCdb(1, 1);
  const lba = rwLba(cdb);
  const n = rwLength(cdb);
  if (n > lu.limits.maxTransferBlocks) throw invalidCdb(lengthByte(cdb[0]));
  checkRange(lu, lba, n);
  if (n === 0) return GOOD;
  const len = n << lu.blockShift;
  const medium = await lu.volume.read(lba * lu.blockSize, len);
  if (bytchk === 0) return GOOD;
  if (bytchk === 1) {
    const data = needData(req.dataOut, len, lengthByte(cdb[0]));
    const d = firstDifference(medium, data);
    if (d >= 0) throw miscompare(d);
    return { status: Status.Good, dataOutLength: len };
  }
  const block = needData(req.dataOut, lu.blockSize, lengthByte(cdb[0]));
  for (let o = 0; o < len; o += lu.blockSize) {
    const d = firstDifference(medium.subarray(o, o + lu.blockSize), block);
    if (d >= 0) throw miscompare(o + d);
  }
  return { status: Status.Good, dataOutLength: lu.blockSize };
};

/** WRITE AND VERIFY 10/12/16 (SBC-3 §5.35-5.37): written durably (the verify is the FUA write). */
export const writeAndVerify: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  if (protectField(cdb) !== 0) throw invalidCdb(1, 5);
  const bytchk = (cdb[1] >> 1) & 0x03;
  if (bytchk > 1) throw invalidCdb(1, 1);
  const lba = rwLba(cdb);
  const n = rwLength(cdb);
  if (n > lu.limits.maxTransferBlocks) throw invalidCdb(lengthByte(cdb[0]));
  checkRange(lu, lba, n);
  if (lu.writeProtected) throw writeProtected();
  if (n === 0) return GOOD;
  const len = n << lu.blockShift;
  const data = deliveredBlocks(lu, req.dataOut, len);
  if (!data) return { status: Status.Good, dataOutLength: len };
  await gatedWrite(lu, env.itn(req.nexus), lba * lu.blockSize, data, true);
  env.counters.bytesWritten += data.length;
  return { status: Status.Good, dataOutLength: len };
};

// ---- WRITE SAME / UNMAP / GET LBA STATUS -----------------------------------------------------

/** WRITE SAME 10/16 (SBC-3 §5.41-5.42). */
export const writeSame: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  const sixteen = cdb[0] === 0x93;
  const flags = cdb[1];
  if (flags >> 5 !== 0) throw invalidCdb(1, 5); // WRPROTECT
  if (flags & 0x10) throw invalidCdb(1, 4); // ANCHOR: ANC_SUP=0
  if (flags & 0x06) throw invalidCdb(1, flags & 0x04 ? 2 : 1); // PBDATA / LBDATA (obsolete)
  const unmap = (flags & 0x08) !== 0;
  const ndob = sixteen && (flags & 0x01) !== 0;
  if (!sixteen && flags & 0x01) throw invalidCdb(1, 0);
  if (unmap && !lu.volume.thin) throw invalidCdb(1, 3); // LBPWS=0
  const lba = sixteen ? read64(cdb, 2) : cdb.readUInt32BE(2);
  let n = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  const nByte = sixteen ? 10 : 7;
  checkRange(lu, lba, n);
  // WSNZ=0: zero blocks means "to the end of the medium" (SBC-3 §5.41).
  if (n === 0) n = lu.blocks - lba;
  if (n > lu.limits.maxWriteSameBlocks) throw invalidCdb(nByte);
  if (lu.writeProtected) throw writeProtected();
  // NDOB, or UNMAP without a Data-Out block: the pattern is not needed (the range reads zeros).
  let pattern: Buffer;
  if (ndob || (unmap && (!req.dataOut || req.dataOut.length === 0))) pattern = zeroBlock(lu.blockSize);
  else pattern = needData(req.dataOut, lu.blockSize, nByte);
  if (n === 0) return ndob ? GOOD : { status: Status.Good, dataOutLength: lu.blockSize };
  const offset = lba * lu.blockSize;
  const len = n * lu.blockSize;
  const wait = lu.gate.enterShared();
  if (wait) await lu.waitShared(wait, env.itn(req.nexus));
  try {
    // UNMAP=1 deallocates; LBPRZ=1 makes the range read zeros, whatever the Data-Out block holds.
    // A strict reading of SBC-4 ("reads behave as if the block was written") would write a
    // non-zero block instead; libiscsi's conformance suite (WriteSame10.UnmapUntilEnd sends 0xFF
    // with UNMAP=1 and expects zeros back), LIO and tgt deallocate. Linux sends zeros anyway.
    const fua = fuaBit(cdb) || !lu.mode.wce ? FUA : undefined;
    if (unmap) await lu.volume.unmap(offset, len, fua);
    else await lu.volume.writeSame(offset, len, pattern, fua);
  } finally {
    lu.gate.exitShared();
  }
  env.counters.bytesWritten += ndob ? 0 : lu.blockSize;
  return ndob ? GOOD : { status: Status.Good, dataOutLength: lu.blockSize };
};

const zeroBlocks = new Map<number, Buffer>();
function zeroBlock(size: number): Buffer {
  let z = zeroBlocks.get(size);
  if (!z) {
    z = Buffer.alloc(size);
    zeroBlocks.set(size, z);
  }
  return z;
}


/** UNMAP (SBC-3 §5.28): validate every descriptor first, then deallocate. */
export const unmap: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  if (!lu.volume.thin) throw invalidCdb(0);
  if (cdb[1] & 0x01) throw invalidCdb(1, 0); // ANCHOR
  const paramLen = cdb.readUInt16BE(7);
  if (paramLen === 0) return GOOD;
  if (paramLen < 8) throw paramListLengthError();
  const data = req.dataOut;
  if (!data || data.length < paramLen) throw paramListLengthError();
  const bdLen = data.readUInt16BE(2);
  if (bdLen > paramLen - 8) throw paramListLengthError();
  const count = bdLen >> 4; // a trailing partial descriptor is ignored
  if (count > lu.limits.maxUnmapDescriptors) throw invalidParam(2);
  const ranges: number[] = [];
  for (let i = 0; i < count; i++) {
    const o = 8 + 16 * i;
    const lba = read64(data, o);
    const n = data.readUInt32BE(o + 8);
    if (n > lu.limits.maxUnmapBlocks) throw invalidParam(o + 8);
    checkRange(lu, lba, n);
    if (n > 0) ranges.push(lba, n);
  }
  if (lu.writeProtected) throw writeProtected();
  if (ranges.length === 0) return { status: Status.Good, dataOutLength: paramLen };
  const wait = lu.gate.enterShared();
  if (wait) await lu.waitShared(wait, env.itn(req.nexus));
  try {
    // WCE=0: each range durable before GOOD, as a write would be (FUA).
    const fua = lu.mode.wce ? undefined : FUA;
    for (let i = 0; i < ranges.length; i += 2) await lu.volume.unmap(ranges[i] * lu.blockSize, ranges[i + 1] * lu.blockSize, fua);
  } finally {
    lu.gate.exitShared();
  }
  return { status: Status.Good, dataOutLength: paramLen };
};

/** Most LBA status descriptors one GET LBA STATUS returns. */
const MAX_LBA_STATUS_DESCRIPTORS = 128;

/** GET LBA STATUS (SBC-3 §5.6): descriptors from the volume's allocation map. */
export const getLbaStatus: Handler = async (lu, req) => {
  const cdb = req.cdb;
  const lba = read64(cdb, 2);
  const alloc = cdb.readUInt32BE(10);
  if (lba >= lu.blocks) throw lbaOutOfRange();
  if (alloc === 0) return GOOD;
  const maxDesc = Math.max(1, Math.min(MAX_LBA_STATUS_DESCRIPTORS, Math.floor((alloc - 8) / 16)));
  // Ask for a bounded window so a huge sparse volume does not produce a huge answer.
  const windowBlocks = Math.min(lu.blocks - lba, Math.max(lu.limits.maxUnmapBlocks, 1 << 20));
  const extents = await lu.volume.allocation(lba * lu.blockSize, windowBlocks * lu.blockSize);
  const descs: { lba: number; n: number; status: number }[] = [];
  let next = lba;
  for (const e of extents) {
    const start = Math.floor(e.offsetBytes / lu.blockSize);
    const end = Math.min(lba + windowBlocks, Math.floor((e.offsetBytes + e.lengthBytes) / lu.blockSize));
    if (end <= next) continue;
    const s = Math.max(start, next);
    const status = e.mapped ? 0 : 1;
    const last = descs[descs.length - 1];
    if (last && last.status === status && last.lba + last.n === s && last.n + (end - s) <= 0xffffffff) last.n += end - s;
    else {
      if (descs.length === maxDesc) break;
      descs.push({ lba: s, n: end - s, status });
    }
    next = end;
  }
  if (descs.length === 0 || descs[0].lba !== lba) descs.unshift({ lba, n: 1, status: 0 });
  while (descs.length > maxDesc) descs.pop();
  const b = Buffer.alloc(8 + 16 * descs.length);
  b.writeUInt32BE(4 + 16 * descs.length, 0);
  descs.forEach((d, i) => {
    const o = 8 + 16 * i;
    b.writeUInt32BE(Math.floor(d.lba / 0x1_0000_0000), o);
    b.writeUInt32BE(d.lba >>> 0, o + 4);
    b.writeUInt32BE(Math.min(d.n, 0xffffffff), o + 8);
    b[o + 12] = d.status;
  });
  // SPC-4 §4.2.5.6: never more than the ALLOCATION LENGTH.
  return { status: Status.Good, dataIn: alloc < b.length ? b.subarray(0, alloc) : b };
};

// ---- COMPARE AND WRITE / ORWRITE ------------------------------------------------------------

/** COMPARE AND WRITE (SBC-3 §5.2): compare and write are atomic against every other write of the LU. */
export const compareAndWrite: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  if (cdb[1] >> 5 !== 0) throw invalidCdb(1, 5);
  const lba = read64(cdb, 2);
  const n = cdb[13];
  // Zero blocks: nothing to compare or write (SBC-3 §5.2) - but a data-out for it is inconsistent.
  if (n === 0) {
    if (req.dataOut && req.dataOut.length > 0) throw invalidCdb(13);
    return GOOD;
  }
  if (n > lu.limits.maxCompareAndWriteBlocks) throw invalidCdb(13);
  checkRange(lu, lba, n);
  const len = n << lu.blockShift;
  const data = req.dataOut;
  if (!data || data.length < 2 * len) throw invalidCdb(13);
  if (lu.writeProtected) throw writeProtected();
  const offset = lba * lu.blockSize;
  await lu.enterExclusive(env.itn(req.nexus));
  try {
    const medium = await lu.volume.read(offset, len);
    const d = firstDifference(medium, data.subarray(0, len));
    if (d >= 0) throw miscompare(d);
    await lu.volume.write(offset, data.subarray(len, 2 * len), fuaBit(cdb) || !lu.mode.wce ? FUA : undefined);
  } finally {
    lu.gate.exitExclusive();
  }
  env.counters.bytesWritten += len;
  return { status: Status.Good, dataOutLength: 2 * len };
};

/** ORWRITE 16 (SBC-3 §5.9): medium |= data-out, under the same exclusive gate. */
export const orWrite: Handler = async (lu, req, env) => {
  const cdb = req.cdb;
  if (cdb[1] >> 5 !== 0) throw invalidCdb(1, 5); // ORPROTECT
  const lba = read64(cdb, 2);
  const n = cdb.readUInt32BE(10);
  if (n > lu.limits.maxTransferBlocks) throw invalidCdb(10);
  checkRange(lu, lba, n);
  if (lu.writeProtected) throw writeProtected();
  if (n === 0) return GOOD;
  const len = n << lu.blockShift;
  const data = needData(req.dataOut, len, 10);
  const offset = lba * lu.blockSize;
  await lu.enterExclusive(env.itn(req.nexus));
  try {
    const medium = await lu.volume.read(offset, len);
    for (let i = 0; i < len; i++) medium[i] |= data[i];
    await lu.volume.write(offset, medium, fuaBit(cdb) || !lu.mode.wce ? FUA : undefined);
  } finally {
    lu.gate.exitExclusive();
  }
  env.counters.bytesWritten += len;
  return { status: Status.Good, dataOutLength: len };
};

// ---- PRE-FETCH / SYNCHRONIZE CACHE -------------------------------------------------------------

/** PRE-FETCH 10/16 (SBC-3 §5.8): nothing to stage; GOOD after the range check. */
export const preFetch: Handler = (lu, req) => {
  const cdb = req.cdb;
  const sixteen = cdb[0] === 0x90;
  const lba = sixteen ? read64(cdb, 2) : cdb.readUInt32BE(2);
  const n = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  checkRange(lu, lba, n);
  return GOOD;
};

/** SYNCHRONIZE CACHE 10/16 (SBC-3 §5.22): a flush error is a MEDIUM ERROR, never GOOD. */
export const synchronizeCache: Handler = async (lu, req) => {
  const cdb = req.cdb;
  const sixteen = cdb[0] === 0x91;
  const lba = sixteen ? read64(cdb, 2) : cdb.readUInt32BE(2);
  const n = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
  checkRange(lu, lba, n);
  try {
    await lu.volume.flush();
  } catch (e) {
    lu.logger?.error({ err: e }, 'flush failed');
    throw new SenseError(SenseKey.MediumError, Asc.WriteError);
  }
  return GOOD;
};

// ---- READ CAPACITY ----------------------------------------------------------------------------

/** READ CAPACITY (10) (SBC-3 §5.15). */
export const readCapacity10: Handler = (lu, req) => {
  const cdb = req.cdb;
  if ((cdb[8] & 0x01) === 0 && cdb.readUInt32BE(2) !== 0) throw invalidCdb(2);
  const b = Buffer.alloc(8);
  const last = lu.blocks - 1;
  b.writeUInt32BE(last > 0xfffffffe ? 0xffffffff : last, 0);
  b.writeUInt32BE(lu.blockSize, 4);
  return { status: Status.Good, dataIn: b };
};

/** READ CAPACITY (16) (SBC-3 §5.16): LBPME/LBPRZ for thin volumes. */
export const readCapacity16: Handler = (lu, req) => {
  const alloc = req.cdb.readUInt32BE(10);
  const b = Buffer.alloc(32);
  const last = lu.blocks - 1;
  b.writeUInt32BE(Math.floor(last / 0x1_0000_0000), 0);
  b.writeUInt32BE(last >>> 0, 4);
  b.writeUInt32BE(lu.blockSize, 8);
  if (lu.volume.thin) b[14] = 0x80 | 0x40; // LBPME | LBPRZ
  // SPC-4 §4.2.5.6: never more than the ALLOCATION LENGTH (0: no data, not an error).
  return { status: Status.Good, dataIn: alloc < b.length ? b.subarray(0, alloc) : b };
};

export type { ScsiResult };
