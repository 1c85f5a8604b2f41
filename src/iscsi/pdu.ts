/**
 * PDU layout (RFC 7143 §11): field accessors over a received 48-byte Basic Header Segment, and
 * pure builders for the headers the target sends. No I/O and no session state here.
 */
import { BHS_LENGTH, FINAL_BIT, IMMEDIATE_BIT, OPCODE_MASK, RESERVED_TAG, TargetOp } from './constants';

/** One received PDU. `data` is the data segment without padding or digest (may share memory with the socket chunk). */
export interface Pdu {
  readonly bhs: Buffer;
  readonly ahs?: Buffer;
  readonly data: Buffer;
}

export const opcode = (bhs: Buffer): number => bhs[0] & OPCODE_MASK;
export const isImmediate = (bhs: Buffer): boolean => (bhs[0] & IMMEDIATE_BIT) !== 0;
export const isFinal = (bhs: Buffer): boolean => (bhs[1] & FINAL_BIT) !== 0;
export const ahsLength = (bhs: Buffer): number => bhs[4] * 4;
export const dataSegmentLength = (bhs: Buffer): number => (bhs[5] << 16) | (bhs[6] << 8) | bhs[7];
export const itt = (bhs: Buffer): number => bhs.readUInt32BE(16);
export const ttt = (bhs: Buffer): number => bhs.readUInt32BE(20);
export const cmdSN = (bhs: Buffer): number => bhs.readUInt32BE(24);
export const expStatSN = (bhs: Buffer): number => bhs.readUInt32BE(28);
/** Data-Out fields. */
export const dataSN = (bhs: Buffer): number => bhs.readUInt32BE(36);
export const bufferOffset = (bhs: Buffer): number => bhs.readUInt32BE(40);
/** SCSI Command: ExpectedDataTransferLength. */
export const expectedDataLength = (bhs: Buffer): number => bhs.readUInt32BE(20);

/** Padding after a data segment of `n` bytes. */
export const padLength = (n: number): number => (4 - (n & 3)) & 3;

/**
 * The LUN field (8 bytes at offset 8) as a 0-based number: peripheral (00b) and flat (01b)
 * single-level addressing; other address methods give -1.
 */
export function decodeLun(bhs: Buffer): number {
  const method = bhs[8] >> 6;
  if (method === 0) return bhs[8] === 0 ? bhs[9] : ((bhs[8] & 0x3f) << 8) | bhs[9];
  if (method === 1) return ((bhs[8] & 0x3f) << 8) | bhs[9];
  return -1;
}

/** Serial number arithmetic (RFC 1982, 32 bits). */
export function snLessThan(a: number, b: number): boolean {
  return a !== b && ((b - a) >>> 0) < 0x80000000;
}
export const snLessOrEqual = (a: number, b: number): boolean => a === b || snLessThan(a, b);
export const snAdd = (a: number, n: number): number => (a + n) >>> 0;

/** The sequence numbers every target PDU carries at bytes 24..35. */
export interface Sequencing {
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

function header(op: TargetOp, flags: number, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(BHS_LENGTH).fill(0);
  b[0] = op;
  b[1] = flags;
  b[5] = (dataLength >>> 16) & 0xff;
  b[6] = (dataLength >>> 8) & 0xff;
  b[7] = dataLength & 0xff;
  return b;
}

function sequencing(b: Buffer, s: Sequencing): void {
  b.writeUInt32BE(s.statSN >>> 0, 24);
  b.writeUInt32BE(s.expCmdSN >>> 0, 28);
  b.writeUInt32BE(s.maxCmdSN >>> 0, 32);
}

export interface LoginResponseFields {
  transit: boolean;
  cont: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionActive: number;
  isid: Buffer;
  tsih: number;
  itt: number;
  status: number;
}

export function loginResponse(f: LoginResponseFields, s: Sequencing, dataLength: number): Buffer {
  const flags = (f.transit ? 0x80 : 0) | (f.cont ? 0x40 : 0) | ((f.csg & 3) << 2) | (f.transit ? f.nsg & 3 : 0);
  const b = header(TargetOp.LoginResponse, flags, dataLength);
  b[2] = f.versionMax;
  b[3] = f.versionActive;
  f.isid.copy(b, 8, 0, 6);
  b.writeUInt16BE(f.tsih, 14);
  b.writeUInt32BE(f.itt >>> 0, 16);
  sequencing(b, s);
  b[36] = f.status >> 8;
  b[37] = f.status & 0xff;
  return b;
}

export function textResponse(final: boolean, cont: boolean, itt: number, ttt: number, lunField: Buffer | undefined, s: Sequencing, dataLength: number): Buffer {
  const b = header(TargetOp.TextResponse, (final ? 0x80 : 0) | (cont ? 0x40 : 0), dataLength);
  if (lunField) lunField.copy(b, 8, 0, 8);
  b.writeUInt32BE(itt >>> 0, 16);
  b.writeUInt32BE(ttt >>> 0, 20);
  sequencing(b, s);
  return b;
}

export interface ScsiResponseFields {
  itt: number;
  status: number;
  response: number;
  /** RESP_OVERFLOW / RESP_UNDERFLOW flag bits. */
  residualFlags: number;
  residual: number;
  expDataSN: number;
}

export function scsiResponse(f: ScsiResponseFields, s: Sequencing, dataLength: number): Buffer {
  const b = header(TargetOp.ScsiResponse, FINAL_BIT | f.residualFlags, dataLength);
  b[2] = f.response;
  b[3] = f.status;
  b.writeUInt32BE(f.itt >>> 0, 16);
  sequencing(b, s);
  b.writeUInt32BE(f.expDataSN >>> 0, 36);
  b.writeUInt32BE(f.residual >>> 0, 44);
  return b;
}

export interface DataInFields {
  itt: number;
  final: boolean;
  /** Status is carried in this PDU (S bit); then the residual fields apply. */
  withStatus: boolean;
  status: number;
  residualFlags: number;
  residual: number;
  lunField: Buffer;
  dataSN: number;
  bufferOffset: number;
}

export function dataIn(f: DataInFields, s: Sequencing, dataLength: number): Buffer {
  let flags = f.final ? FINAL_BIT : 0;
  if (f.withStatus) flags |= 0x01 | f.residualFlags;
  const b = header(TargetOp.DataIn, flags, dataLength);
  if (f.withStatus) b[3] = f.status;
  f.lunField.copy(b, 8, 0, 8);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE(RESERVED_TAG, 20);
  sequencing(b, s);
  b.writeUInt32BE(f.dataSN >>> 0, 36);
  b.writeUInt32BE(f.bufferOffset >>> 0, 40);
  if (f.withStatus) b.writeUInt32BE(f.residual >>> 0, 44);
  return b;
}

export interface R2tFields {
  itt: number;
  ttt: number;
  lunField: Buffer;
  r2tSN: number;
  bufferOffset: number;
  desiredLength: number;
}

export function r2t(f: R2tFields, s: Sequencing): Buffer {
  const b = header(TargetOp.ReadyToTransfer, FINAL_BIT, 0);
  f.lunField.copy(b, 8, 0, 8);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE(f.ttt >>> 0, 20);
  sequencing(b, s);
  b.writeUInt32BE(f.r2tSN >>> 0, 36);
  b.writeUInt32BE(f.bufferOffset >>> 0, 40);
  b.writeUInt32BE(f.desiredLength >>> 0, 44);
  return b;
}

export function nopIn(itt: number, ttt: number, lunField: Buffer | undefined, s: Sequencing, dataLength: number): Buffer {
  const b = header(TargetOp.NopIn, FINAL_BIT, dataLength);
  if (lunField) lunField.copy(b, 8, 0, 8);
  b.writeUInt32BE(itt >>> 0, 16);
  b.writeUInt32BE(ttt >>> 0, 20);
  sequencing(b, s);
  return b;
}

export function tmfResponse(itt: number, response: number, s: Sequencing): Buffer {
  const b = header(TargetOp.TaskManagementResponse, FINAL_BIT, 0);
  b[2] = response;
  b.writeUInt32BE(itt >>> 0, 16);
  sequencing(b, s);
  return b;
}

export function logoutResponse(itt: number, response: number, time2Wait: number, time2Retain: number, s: Sequencing): Buffer {
  const b = header(TargetOp.LogoutResponse, FINAL_BIT, 0);
  b[2] = response;
  b.writeUInt32BE(itt >>> 0, 16);
  sequencing(b, s);
  b.writeUInt16BE(time2Wait, 40);
  b.writeUInt16BE(time2Retain, 42);
  return b;
}

export function reject(reason: number, s: Sequencing, dataLength: number): Buffer {
  const b = header(TargetOp.Reject, FINAL_BIT, dataLength);
  b[2] = reason;
  b.writeUInt32BE(RESERVED_TAG, 16);
  sequencing(b, s);
  return b;
}

export function asyncMessage(event: number, param1: number, param2: number, param3: number, s: Sequencing): Buffer {
  const b = header(TargetOp.AsyncMessage, FINAL_BIT, 0);
  b.writeUInt32BE(RESERVED_TAG, 16);
  sequencing(b, s);
  b[36] = event;
  b.writeUInt16BE(param1, 38);
  b.writeUInt16BE(param2, 40);
  b.writeUInt16BE(param3, 42);
  return b;
}
