/**
 * Pure CDB field decoding (SPC-4 §4.2, SBC-3 §5). Functions return numbers so the hot path
 * allocates nothing; LBAs above 2^53 are returned as Infinity-safe large numbers and always
 * fail the range check.
 */
import { Op } from './constants';

/** CDB length by group code (SPC-4 §4.2.5.1): 6, 10, 10, reserved, 16, 12, vendor, vendor. */
const GROUP_LEN = [6, 10, 10, 0, 16, 12, 0, 0];

/** Length of the CDB of `opcode`, 0 when the group is reserved/vendor specific (0x7F: variable). */
export function cdbLength(opcode: number): number {
  if (opcode === Op.Variable) return 0;
  return GROUP_LEN[opcode >> 5];
}

/** 64-bit big-endian LBA as a JS number (exact up to 2^53; beyond that far past any capacity). */
export function read64(cdb: Buffer, offset: number): number {
  return cdb.readUInt32BE(offset) * 0x1_0000_0000 + cdb.readUInt32BE(offset + 4);
}

export function read24(b: Buffer, offset: number): number {
  return (b[offset] << 16) | (b[offset + 1] << 8) | b[offset + 2];
}

/** LBA of a READ/WRITE-family CDB. */
export function rwLba(cdb: Buffer): number {
  switch (cdbLength(cdb[0])) {
    case 6:
      return ((cdb[1] & 0x1f) << 16) | (cdb[2] << 8) | cdb[3];
    case 10:
    case 12:
      return cdb.readUInt32BE(2);
    default:
      return read64(cdb, 2);
  }
}

/**
 * TRANSFER LENGTH / NUMBER OF LOGICAL BLOCKS of a READ/WRITE-family CDB. READ(6)/WRITE(6):
 * 0 means 256 blocks (SBC-3 §5.10, §5.30).
 */
export function rwLength(cdb: Buffer): number {
  switch (cdbLength(cdb[0])) {
    case 6:
      return cdb[4] === 0 ? 256 : cdb[4];
    case 10:
      return cdb.readUInt16BE(7);
    case 12:
      return cdb.readUInt32BE(6);
    default:
      return cdb.readUInt32BE(10);
  }
}

/** RDPROTECT / WRPROTECT / VRPROTECT (bits 7..5 of byte 1) of the 10/12/16-byte forms. */
export function protectField(cdb: Buffer): number {
  return cdb[1] >> 5;
}

/** FUA bit (byte 1 bit 3) of the 10/12/16-byte forms. */
export function fuaBit(cdb: Buffer): boolean {
  return (cdb[1] & 0x08) !== 0;
}

/** ALLOCATION LENGTH of common commands. */
export function allocationLength(cdb: Buffer): number {
  switch (cdb[0]) {
    case Op.Inquiry:
      return cdb.readUInt16BE(3);
    case Op.ModeSense6:
    case Op.RequestSense:
      return cdb[4];
    case Op.ModeSense10:
    case Op.PersistentReserveIn:
      return cdb.readUInt16BE(7);
    case Op.ReportLuns:
    case Op.MaintenanceIn:
      return cdb.readUInt32BE(6);
    case Op.ServiceActionIn16:
      return cdb.readUInt32BE(10);
    case Op.ReceiveCopyResults:
      return cdb.readUInt32BE(10);
    default:
      return 0;
  }
}

/** Service action (byte 1 bits 4..0) for the opcodes that have one. */
export function serviceAction(cdb: Buffer): number {
  return cdb[1] & 0x1f;
}

/** Whether the opcode carries a service action in byte 1. */
export function hasServiceAction(opcode: number): boolean {
  return (
    opcode === Op.ServiceActionIn16 ||
    opcode === Op.ServiceActionOut16 ||
    opcode === Op.MaintenanceIn ||
    opcode === Op.MaintenanceOut ||
    opcode === Op.ExtendedCopy ||
    opcode === Op.ReceiveCopyResults ||
    opcode === Op.PersistentReserveIn ||
    opcode === Op.PersistentReserveOut
  );
}
