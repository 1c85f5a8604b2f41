/**
 * Primary commands that need no file of their own (SPC-4 §6): TEST UNIT READY, REPORT LUNS,
 * START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, RESERVE/RELEASE 6/10, PERSISTENT RESERVE IN/OUT,
 * REPORT TARGET PORT GROUPS.
 */
import { Op, Status } from './constants';
import type { Handler } from './env';
import type { LogicalUnit } from './lu';
import type { ScsiResult } from './port';
import { type PrOutcome, decodePrOutParams, hasRegistrations, prIn, prOut } from './pr';
import { PrStoreError } from './pr-store';
import { Asc, SenseKey } from './constants';
import { GOOD, RESERVATION_CONFLICT, SenseError, invalidCdb } from './sense';

export const testUnitReady: Handler = () => GOOD;

/** REPORT LUNS (SPC-4 §6.33): SELECT REPORT 00h/02h all, 01h well-known only (none). */
export const reportLuns: Handler = (_lu, req, env) => {
  const cdb = req.cdb;
  const select = cdb[2];
  if (select > 2) throw invalidCdb(2);
  const alloc = cdb.readUInt32BE(6);
  const luns = select === 1 ? [] : [...env.luns.keys()].sort((a, b) => a - b);
  const b = Buffer.alloc(8 + 8 * luns.length);
  b.writeUInt32BE(8 * luns.length, 0);
  luns.forEach((lun, i) => {
    const o = 8 + 8 * i;
    if (lun < 256) b[o + 1] = lun; // peripheral device addressing
    else {
      b[o] = 0x40 | ((lun >> 8) & 0x3f); // flat space addressing
      b[o + 1] = lun & 0xff;
    }
  });
  return { status: Status.Good, dataIn: alloc < b.length ? b.subarray(0, alloc) : b };
};

/** START STOP UNIT (SBC-3 §5.20): the medium is always ready; accepted without effect. */
export const startStopUnit: Handler = (_lu, req) => {
  const cdb = req.cdb;
  const powerCondition = cdb[4] >> 4;
  // Power conditions 0 (START_VALID), 1 active, 2 idle, 3 standby, 7 LU control, 0xA/0xB force: accepted.
  if (![0, 1, 2, 3, 7, 0xa, 0xb].includes(powerCondition)) throw invalidCdb(4, 4);
  return GOOD;
};

/** PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.9): not removable; accepted. */
export const preventAllow: Handler = (_lu, req) => {
  if ((req.cdb[4] & 0x03) > 1) throw invalidCdb(4, 0);
  return GOOD;
};

/** RESERVE(6)/(10) (SPC-2 §7.21). Conflicts while persistent registrations exist (CRH=1). */
export const reserve: Handler = (lu, req, env) => {
  const cdb = req.cdb;
  if (cdb[0] === Op.Reserve10 && cdb[1] & 0x03) throw invalidCdb(1, cdb[1] & 0x02 ? 1 : 0); // 3RDPTY / LONGID
  if (cdb[0] === Op.Reserve6 && cdb[1] & 0x01) throw invalidCdb(1, 0); // extent
  if (hasRegistrations(lu.pr)) return RESERVATION_CONFLICT;
  return lu.spc2.reserve(env.itn(req.nexus)) ? GOOD : RESERVATION_CONFLICT;
};

/** RELEASE(6)/(10): releases only the holder's reservation; otherwise GOOD without effect. */
export const release: Handler = (lu, req, env) => {
  if (!hasRegistrations(lu.pr)) lu.spc2.release(env.itn(req.nexus));
  return GOOD;
};

/** PERSISTENT RESERVE IN (SPC-4 §6.15). */
export const persistentReserveIn: Handler = (lu, req) => {
  const cdb = req.cdb;
  const data = prIn(lu.pr, cdb[1] & 0x1f);
  const alloc = cdb.readUInt16BE(7);
  return { status: Status.Good, dataIn: alloc < data.length ? data.subarray(0, alloc) : data };
};

/**
 * PERSISTENT RESERVE OUT (SPC-4 §6.16). Serialised per LU; a changed state is written to the
 * store before the command completes, and only then becomes the LU's state.
 *
 * PREEMPT AND ABORT (SPC-4 §5.12.11.2.5): the preempted nexuses' tasks for this LU are aborted,
 * as by ABORT TASK SET, before the command completes - otherwise a write of a fenced-off node
 * already in flight could land, and be acknowledged, after the fencing node was told GOOD.
 * Those still waiting for the write gate are refused at once (`LogicalUnit.nexusesAborted`);
 * the transport aborts the rest and waits for those already at the volume, and so does this for
 * an EXTENDED COPY issued at another target that writes here with their rights. That wait runs
 * outside the PR OUT queue: a preempted nexus's own PR OUT queued behind this one must be
 * able to finish (with RESERVATION CONFLICT) for its task to settle.
 */
export const persistentReserveOut: Handler = (lu, req, env) => {
  const run = lu.prQueue.then(() => prOutLocked(lu, req.cdb, req.dataOut, env.itn(req.nexus), req.nexus.initiatorPortName, req.nexus.relativeTargetPortId));
  lu.prQueue = run.catch(() => undefined);
  return run.then(async ({ result, aborted }) => {
    if (aborted.length > 0) await Promise.all([env.abortNexusTasks(lu.lun, aborted), lu.copyWritesSettled(aborted)]);
    return result;
  });
};

async function prOutLocked(lu: LogicalUnit, cdb: Buffer, data: Buffer | undefined, itn: string, initiatorPortName: string, rtpi: number): Promise<{ result: ScsiResult; aborted: readonly string[] }> {
  const sa = cdb[1] & 0x1f;
  const scope = cdb[2] >> 4;
  const type = cdb[2] & 0x0f;
  const paramLen = cdb.readUInt32BE(5);
  if (sa > 7) throw invalidCdb(1, 4);
  const params = decodePrOutParams(sa, paramLen, data);
  const outcome: PrOutcome = prOut(lu.pr, sa, scope, type, { itn, initiatorPortName, rtpi }, params);
  if (outcome.conflict) return { result: RESERVATION_CONFLICT, aborted: NONE };
  if (outcome.changed) {
    try {
      await lu.prStore.save(outcome.next);
    } catch (e) {
      lu.logger?.error({ err: e }, 'persistent reservation state not saved');
      if (e instanceof PrStoreError) throw new SenseError(SenseKey.HardwareError, Asc.InternalTargetFailure);
      throw e;
    }
    lu.pr = outcome.next;
  }
  for (const [who, ascq] of outcome.uas) lu.ua.add(who, ascq);
  // In the same turn as the new state: no task of a preempted nexus gets through the gate after it.
  if (outcome.aborted.length > 0) lu.nexusesAborted(outcome.aborted);
  return { result: { status: Status.Good, dataOutLength: paramLen }, aborted: outcome.aborted };
}

const NONE: readonly string[] = Object.freeze([]);

/** REPORT TARGET PORT GROUPS (SPC-4 §6.36): one group, one port, active/optimized. */
export const reportTargetPortGroups: Handler = (_lu, req) => {
  const cdb = req.cdb;
  const format = cdb[1] >> 5;
  if (format !== 0 && format !== 1) throw invalidCdb(1, 5);
  const alloc = cdb.readUInt32BE(6);
  const ext = format === 1;
  const hdr = ext ? 8 : 4;
  const b = Buffer.alloc(hdr + 8 + 4);
  b.writeUInt32BE(b.length - 4, 0);
  if (ext) {
    b[4] = 0x10; // FORMAT TYPE 001b
    b[5] = 0; // IMPLICIT TRANSITION TIME
  }
  const g = hdr;
  b[g] = 0x80 | 0x00; // PREF | ASYMMETRIC ACCESS STATE 0 (active/optimized)
  b[g + 1] = 0x01; // AO_SUP: only active/optimized is ever reported
  b.writeUInt16BE(req.nexus.targetPortGroup & 0xffff, g + 2);
  b[g + 5] = 0x02; // STATUS CODE: implicit
  b[g + 7] = 1; // TARGET PORT COUNT
  b.writeUInt16BE(req.nexus.relativeTargetPortId & 0xffff, g + 8 + 2);
  return { status: Status.Good, dataIn: alloc < b.length ? b.subarray(0, alloc) : b };
};

export type { LogicalUnit };
