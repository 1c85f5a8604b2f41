/**
 * EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 §6.3, §6.18): block-to-block segment
 * descriptors (0x02) between identification target descriptors (0xE4) naming LUs by their NAA
 * designator. The copy runs synchronously; the status is kept for COPY STATUS.
 *
 * The copy manager reaches only LUs the issuing initiator port may reach itself (what LIO
 * settled on after CVE-2020-28374, where any LU of the host could be read or overwritten): the
 * LUs of the issuing target, and an LU of another target of the appliance only while the same
 * initiator port has a session to that target (so it passed that target's ACL and CHAP). Every
 * LU a segment uses is accessed as its own I_T nexus would access it: a pending unit attention,
 * an SPC-2 reservation of another nexus, or a persistent reservation denying read (source) or
 * write (destination) access refuses the copy; the destination's write protection (read-only
 * volume or SWP) too; and writes take the destination LU's write gate, so COMPARE AND WRITE
 * there stays atomic. Reservations are checked again for each chunk, so a copy stops when a
 * reservation taken meanwhile (e.g. PREEMPT AND ABORT) shuts the nexus out.
 */
import { Access, prConflict } from './pr';
import { Asc, Designator, SaRcr, SenseKey, Status, XcopyDescr } from './constants';
import { read64, read24 } from './cdb';
import type { TargetEnv } from './env';
import type { LogicalUnit } from './lu';
import type { ScsiRequest, ScsiResult } from './port';
import { GOOD, SenseError, illegal, invalidCdb, invalidParam, paramListLengthError, writeProtected } from './sense';
import { naaDesignator } from './vpd';

/** A destination write with WCE=0: durable before the copy completes. */
const WRITE_THROUGH = Object.freeze({ fua: true });

/** Operating parameters we report (RECEIVE COPY RESULTS / OPERATING PARAMETERS). */
export const XCOPY_LIMITS = {
  maxTargetDescriptors: 2,
  maxSegmentDescriptors: 1,
  maxDescriptorListLength: 1024,
  maxSegmentBlocks: 0xffff,
  maxConcurrentCopies: 1,
  /** Data moved per read/write while copying. */
  chunkBlocks: 2048,
} as const;

const HEADER_LEN = 16;
const TARGET_DESC_LEN = 32;
const B2B_SEG_LEN = 28;

function copyAborted(ascq: number): SenseError {
  return new SenseError(SenseKey.CopyAborted, ascq);
}

/** An LU a segment copies from or to, and the I_T nexus whose access rights apply there. */
interface CopyTarget {
  lu: LogicalUnit;
  itn: string;
}

/**
 * A copy target the issuing nexus may not use. Errors met while processing segment descriptors
 * end the command with COPY ABORTED (SPC-2 §7.2.3, SPC-4 §6.3); an unavailable copy target is
 * COPY TARGET DEVICE NOT REACHABLE, what LIO answers too.
 */
function unreachable(): SenseError {
  return copyAborted(Asc.CopyTargetDeviceNotReachable);
}

/**
 * The LU an identification descriptor names, among those the issuing initiator port may reach
 * (see the file comment); undefined otherwise, which fails the segment that uses it with COPY
 * TARGET DEVICE NOT REACHABLE, the same as for an LU that does not exist.
 */
function resolveTarget(desc: Buffer, req: ScsiRequest, env: TargetEnv): CopyTarget | undefined {
  // Identification descriptor (SPC-4 §6.3.6.2): bytes 4.. are a designation descriptor.
  const codeSet = desc[4] & 0x0f;
  const assoc = (desc[5] >> 4) & 0x03;
  const type = desc[5] & 0x0f;
  const len = desc[7];
  if (codeSet !== Designator.CodeSetBinary || type !== Designator.TypeNaa || assoc !== Designator.AssocLu || len !== 16) return undefined;
  const naa = desc.subarray(8, 24);
  for (const lu of env.luns.values()) if (naaDesignator(lu.volume).equals(naa)) return { lu, itn: env.itn(req.nexus) };
  return env.copyPeerByDesignator?.(Buffer.from(naa))?.copyTargetFor(Buffer.from(naa), req.nexus.initiatorPortName);
}

/**
 * The checks a command of `access` from `t.itn` would meet at `t.lu` (target.ts dispatch and the
 * write handlers), without taking its unit attention: that belongs to the session of that nexus.
 */
function checkAccess(t: CopyTarget, access: Access, withAttention: boolean): void {
  const lu = t.lu;
  if (withAttention && lu.ua.pending(t.itn)) throw unreachable();
  if (lu.spc2.conflicts(t.itn)) throw unreachable();
  if (lu.pr.reservation !== undefined && prConflict(lu.pr, t.itn, access)) throw unreachable();
  if (access === Access.Write && lu.writeProtected) throw writeProtected();
}

/** EXTENDED COPY (LID1). */
export async function extendedCopy(lu: LogicalUnit, req: ScsiRequest, env: TargetEnv): Promise<ScsiResult> {
  const cdb = req.cdb;
  const paramLen = cdb.readUInt32BE(10);
  if (paramLen === 0) return GOOD; // SPC-4 §6.3.1: not an error
  const data = req.dataOut;
  if (!data || data.length < paramLen) throw paramListLengthError();
  if (paramLen < HEADER_LEN) throw paramListLengthError();
  const p = data.subarray(0, paramLen);
  const listId = p[0];
  const listIdUsage = (p[1] >> 3) & 0x03;
  if (listIdUsage === 0x01) throw invalidParam(1, 3); // LIST ID USAGE 01b is reserved
  const tdLen = p.readUInt16BE(2);
  const sdLen = p.readUInt32BE(8);
  const inlineLen = p.readUInt32BE(12);
  if (inlineLen !== 0) throw invalidParam(12);
  if (tdLen % TARGET_DESC_LEN !== 0) throw invalidParam(2);
  if (HEADER_LEN + tdLen + sdLen > paramLen) throw paramListLengthError();
  if (tdLen + sdLen > XCOPY_LIMITS.maxDescriptorListLength) throw paramListLengthError();
  const nTargets = tdLen / TARGET_DESC_LEN;
  if (nTargets > XCOPY_LIMITS.maxTargetDescriptors) throw illegal(Asc.TooManyTargetDescriptors);

  // Target descriptors.
  const targets: (CopyTarget | undefined)[] = [];
  for (let i = 0; i < nTargets; i++) {
    const o = HEADER_LEN + i * TARGET_DESC_LEN;
    const d = p.subarray(o, o + TARGET_DESC_LEN);
    if (d[0] !== XcopyDescr.IdentificationTarget) throw illegal(Asc.UnsupportedTargetDescriptorTypeCode);
    // SPC-4 §6.3.6.1: LU ID TYPE is ignored (obsolete); the designator identifies the LU.
    if ((d[1] & 0x1f) !== 0) throw invalidParam(o + 1); // PERIPHERAL DEVICE TYPE must be block
    const nul = (d[1] & 0x20) !== 0;
    if (nul) {
      targets.push(undefined);
      continue;
    }
    const t = resolveTarget(d, req, env);
    if (t) {
      const bs = read24(d, 29);
      if (bs !== t.lu.blockSize) throw invalidParam(o + 29);
    }
    targets.push(t);
  }

  // Segment descriptors.
  const segs: { src: number; dst: number; n: number; srcLba: number; dstLba: number }[] = [];
  let o = HEADER_LEN + tdLen;
  const end = HEADER_LEN + tdLen + sdLen;
  while (o < end) {
    if (o + 4 > end) throw paramListLengthError();
    const type = p[o];
    const dlen = p.readUInt16BE(o + 2) + 4;
    if (type !== XcopyDescr.BlockToBlockSegment) throw illegal(Asc.UnsupportedSegmentDescriptorTypeCode);
    if (segs.length >= XCOPY_LIMITS.maxSegmentDescriptors) throw illegal(Asc.TooManySegmentDescriptors);
    if (dlen !== B2B_SEG_LEN) throw invalidParam(o + 2);
    if (o + dlen > end) throw paramListLengthError();
    if (p[o + 1] & 0x02) throw invalidParam(o + 1, 1); // DC (destination count) unsupported
    segs.push({
      src: p.readUInt16BE(o + 4),
      dst: p.readUInt16BE(o + 6),
      n: p.readUInt16BE(o + 10),
      srcLba: read64(p, o + 12),
      dstLba: read64(p, o + 20),
    });
    o += dlen;
  }

  let processed = 0;
  let transferred = 0;
  const key = `${env.itn(req.nexus)}#${listId}`;
  const record = (status: number) => {
    if (listIdUsage === 0x03) return; // list id not to be held
    lu.copyResults.set(key, { status, segmentsProcessed: processed, transferCountBlocks: transferred });
  };
  try {
    for (const s of segs) {
      const src = s.src < targets.length ? targets[s.src] : undefined;
      const dst = s.dst < targets.length ? targets[s.dst] : undefined;
      if (!src || !dst) throw unreachable();
      checkAccess(src, Access.Read, true);
      checkAccess(dst, Access.Write, true);
      // PREEMPT AND ABORT of the nexus at either LU from now on stops the copy (see copyWrite).
      const srcMark = src.lu.abortMark;
      const dstMark = dst.lu.abortMark;
      const bs = src.lu.blockSize;
      if (s.srcLba + s.n > src.lu.blocks || s.dstLba + s.n > dst.lu.blocks) throw copyAborted(Asc.NoAdditionalSense);
      if (bs !== dst.lu.blockSize) throw copyAborted(Asc.NoAdditionalSense);
      for (let done = 0; done < s.n; ) {
        const chunk = Math.min(XCOPY_LIMITS.chunkBlocks, s.n - done);
        checkAccess(src, Access.Read, false);
        if (src.lu.abortedSince(src.itn, srcMark)) throw unreachable();
        const buf = await src.lu.volume.read((s.srcLba + done) * bs, chunk * bs);
        const wait = dst.lu.gate.enterShared();
        if (wait) await wait;
        try {
          // Again under the gate: the read, or the wait, may have taken a while.
          checkAccess(dst, Access.Write, false);
          if (dst.lu.abortedSince(dst.itn, dstMark)) throw unreachable();
          // WCE=0: durable before GOOD, as a WRITE would be (FUA).
          await dst.lu.copyWrite(dst.itn, dst.lu.volume.write((s.dstLba + done) * bs, buf, dst.lu.mode.wce ? undefined : WRITE_THROUGH));
        } finally {
          dst.lu.gate.exitShared();
        }
        env.counters.bytesRead += buf.length;
        env.counters.bytesWritten += buf.length;
        done += chunk;
        transferred += chunk;
      }
      processed++;
    }
  } catch (e) {
    record(0x02); // operation completed with errors... (COPY STATUS: failed)
    throw e;
  }
  record(0x01);
  return { status: Status.Good, dataOutLength: paramLen };
}

/** RECEIVE COPY RESULTS: OPERATING PARAMETERS and COPY STATUS. */
export function receiveCopyResults(lu: LogicalUnit, req: ScsiRequest, env: TargetEnv): ScsiResult {
  const cdb = req.cdb;
  const sa = cdb[1] & 0x1f;
  const alloc = cdb.readUInt32BE(10);
  let data: Buffer;
  switch (sa) {
    case SaRcr.OperatingParameters: {
      // SPC-4 §6.18.4
      data = Buffer.alloc(44);
      data.writeUInt32BE(data.length - 4, 0);
      data[4] = 0x00; // SNLID=0
      data.writeUInt16BE(XCOPY_LIMITS.maxTargetDescriptors, 8);
      data.writeUInt16BE(XCOPY_LIMITS.maxSegmentDescriptors, 10);
      data.writeUInt32BE(XCOPY_LIMITS.maxDescriptorListLength, 12);
      data.writeUInt32BE(XCOPY_LIMITS.maxSegmentBlocks * lu.blockSize, 16); // MAXIMUM SEGMENT LENGTH (bytes)
      data.writeUInt32BE(0, 20); // MAXIMUM INLINE DATA LENGTH
      data.writeUInt32BE(0, 24); // HELD DATA LIMIT
      data.writeUInt32BE(0, 28); // MAXIMUM STREAM DEVICE TRANSFER SIZE
      data.writeUInt16BE(XCOPY_LIMITS.maxConcurrentCopies, 34);
      data[36] = 0; // DATA SEGMENT GRANULARITY (log2)
      data[37] = 0; // INLINE DATA GRANULARITY
      data[38] = 0; // HELD DATA GRANULARITY
      data[43] = 2; // IMPLEMENTED DESCRIPTOR LIST LENGTH
      data = Buffer.concat([data, Buffer.from([XcopyDescr.BlockToBlockSegment, XcopyDescr.IdentificationTarget])]);
      data.writeUInt32BE(data.length - 4, 0);
      break;
    }
    case SaRcr.CopyStatus: {
      const r = lu.copyResults.get(`${env.itn(req.nexus)}#${cdb[2]}`);
      if (!r) throw invalidCdb(2);
      // SPC-4 §6.18.2
      data = Buffer.alloc(12);
      data.writeUInt32BE(8, 0);
      data[4] = r.status; // COPY MANAGER STATUS (HDD=0)
      data.writeUInt16BE(r.segmentsProcessed, 5);
      data[7] = 0x00; // TRANSFER COUNT UNITS: bytes... 0 = blocks? (0x00: bytes)
      data.writeUInt32BE(Math.min(0xffffffff, r.transferCountBlocks * lu.blockSize), 8);
      break;
    }
    default:
      throw invalidCdb(1, 4);
  }
  return { status: Status.Good, dataIn: alloc < data.length ? data.subarray(0, alloc) : data };
}
