/**
 * Sense data (SPC-4 §4.5): fixed (0x70) and descriptor (0x72) formats, the `SenseError`
 * thrown inside command handlers, and the shared result objects.
 */
import type { ScsiResult } from './port';
import { Asc, SenseKey, Status } from './constants';

/** Where in the CDB / parameter list an invalid field is (SPC-4 §4.5.2.4.2 field pointer). */
export interface FieldPointer {
  /** true: in the CDB (C/D=1); false: in the parameter data. */
  readonly inCdb: boolean;
  readonly byte: number;
  /** Bit 0..7, when the field starts at a bit inside the byte. */
  readonly bit?: number;
}

/** A command failure with its sense. Thrown by handlers; `target.ts` turns it into a result. */
export class SenseError extends Error {
  readonly code = 'SCSI_SENSE';
  constructor(
    readonly key: number,
    /** (ASC << 8) | ASCQ */
    readonly ascq: number,
    readonly field?: FieldPointer,
    /** INFORMATION field (e.g. miscompare offset); undefined when not valid. */
    readonly information?: number,
  ) {
    super(`sense ${key.toString(16)}/${(ascq >> 8).toString(16)}/${(ascq & 0xff).toString(16)}`);
  }
}

/**
 * The task was aborted while it waited (its I_T nexus was preempted by PREEMPT AND ABORT):
 * it ends with TASK ABORTED and never touches the medium. The iSCSI transport sends no
 * status for such a task (TAS=0); the status is for transports that do.
 */
export class TaskAbortedError extends Error {
  readonly code = 'SCSI_TASK_ABORTED';
  constructor() {
    super('task aborted: its I_T nexus was preempted (PREEMPT AND ABORT)');
  }
}

/** INVALID FIELD IN CDB at `byte` (and `bit`). */
export function invalidCdb(byte: number, bit?: number): SenseError {
  return new SenseError(SenseKey.IllegalRequest, Asc.InvalidFieldInCdb, { inCdb: true, byte, bit });
}

/** INVALID FIELD IN PARAMETER LIST at `byte` (and `bit`). */
export function invalidParam(byte: number, bit?: number): SenseError {
  return new SenseError(SenseKey.IllegalRequest, Asc.InvalidFieldInParameterList, { inCdb: false, byte, bit });
}

export function illegal(ascq: number): SenseError {
  return new SenseError(SenseKey.IllegalRequest, ascq);
}

export const lbaOutOfRange = (): SenseError => new SenseError(SenseKey.IllegalRequest, Asc.LbaOutOfRange);
export const paramListLengthError = (): SenseError => new SenseError(SenseKey.IllegalRequest, Asc.ParameterListLengthError);
export const writeProtected = (): SenseError => new SenseError(SenseKey.DataProtect, Asc.WriteProtected);

/**
 * Build sense bytes. Fixed format is 18 bytes (SPC-4 §4.5.3); descriptor format carries an
 * information descriptor (type 0) and a sense-key-specific descriptor (type 2) when present.
 */
export function buildSense(
  descriptorFormat: boolean,
  key: number,
  ascq: number,
  field?: FieldPointer,
  information?: number,
): Buffer {
  const asc = (ascq >> 8) & 0xff;
  const q = ascq & 0xff;
  let sks: number | undefined;
  if (field) {
    // SKSV(0x80) | C/D(0x40) | BPV(0x08) | bit pointer(2..0), then 16-bit field pointer.
    sks = 0x800000 | (field.inCdb ? 0x400000 : 0) | (field.bit !== undefined ? 0x080000 | ((field.bit & 7) << 16) : 0) | (field.byte & 0xffff);
  }
  if (!descriptorFormat) {
    const b = Buffer.alloc(18);
    b[0] = 0x70 | (information !== undefined ? 0x80 : 0);
    b[2] = key & 0x0f;
    if (information !== undefined) b.writeUInt32BE(information >>> 0, 3);
    b[7] = 10; // additional sense length
    b[12] = asc;
    b[13] = q;
    if (sks !== undefined) {
      b[15] = (sks >> 16) & 0xff;
      b.writeUInt16BE(sks & 0xffff, 16);
    }
    return b;
  }
  const len = 8 + (information !== undefined ? 12 : 0) + (sks !== undefined ? 8 : 0);
  const b = Buffer.alloc(len);
  b[0] = 0x72;
  b[1] = key & 0x0f;
  b[2] = asc;
  b[3] = q;
  b[7] = len - 8;
  let o = 8;
  if (information !== undefined) {
    b[o] = 0x00; // information descriptor
    b[o + 1] = 0x0a;
    b[o + 2] = 0x80; // VALID
    b.writeBigUInt64BE(BigInt(information), o + 4);
    o += 12;
  }
  if (sks !== undefined) {
    b[o] = 0x02; // sense key specific descriptor
    b[o + 1] = 0x06;
    b[o + 4] = (sks >> 16) & 0xff;
    b.writeUInt16BE(sks & 0xffff, o + 5);
  }
  return b;
}

/** The one GOOD result without data, shared by every command that returns nothing. */
export const GOOD: ScsiResult = Object.freeze({ status: Status.Good });
export const RESERVATION_CONFLICT: ScsiResult = Object.freeze({ status: Status.ReservationConflict });
export const CONDITION_MET: ScsiResult = Object.freeze({ status: Status.ConditionMet });
export const TASK_ABORTED: ScsiResult = Object.freeze({ status: Status.TaskAborted });

export function checkCondition(sense: Buffer, dataOutLength?: number): ScsiResult {
  return dataOutLength === undefined ? { status: Status.CheckCondition, sense } : { status: Status.CheckCondition, sense, dataOutLength };
}

/** Decode the sense key and ASC/ASCQ of either format (for stats and tests). */
export function parseSense(sense: Buffer): { key: number; ascq: number; information?: number; sks?: number } {
  const code = sense[0] & 0x7f;
  if (code === 0x72 || code === 0x73) {
    const out: { key: number; ascq: number; information?: number; sks?: number } = { key: sense[1] & 0x0f, ascq: (sense[2] << 8) | sense[3] };
    let o = 8;
    const end = Math.min(sense.length, 8 + sense[7]);
    while (o + 2 <= end) {
      const t = sense[o];
      const l = sense[o + 1];
      if (t === 0 && o + 12 <= end) out.information = Number(sense.readBigUInt64BE(o + 4));
      if (t === 2 && o + 7 <= end) out.sks = (sense[o + 4] << 16) | sense.readUInt16BE(o + 5);
      o += 2 + l;
    }
    return out;
  }
  const out: { key: number; ascq: number; information?: number; sks?: number } = {
    key: sense[2] & 0x0f,
    ascq: sense.length >= 14 ? (sense[12] << 8) | sense[13] : 0,
  };
  if (sense[0] & 0x80) out.information = sense.readUInt32BE(3);
  if (sense.length >= 18 && sense[15] & 0x80) out.sks = (sense[15] << 16) | sense.readUInt16BE(16);
  return out;
}
