/**
 * The initiator's side of the iSCSI wire format for tests, written from RFC 7143 §11 rather than
 * from src/iscsi: builders for the PDUs an initiator sends, a decoder for the PDUs a target sends,
 * and a frame walker that checks digests on captured bytes. Tests use it to round-trip the
 * target's codec against an independent reading of the spec.
 */
import { crc32c } from '@node-rs/crc32';

export const BHS = 48;
const ZERO = Buffer.alloc(4);

/** RFC 7143 §13.1: CRC32C over the bytes, sent least significant byte first. */
export function crc(...parts: Buffer[]): number {
  let c = 0;
  for (const p of parts) if (p.length) c = crc32c(p, c);
  return c >>> 0;
}

export function le32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

export const pad4 = (n: number): number => (4 - (n % 4)) % 4;

/** Single-level LUN field (SAM peripheral addressing for < 256, flat above). */
export function lunField(lun: number): Buffer {
  const b = Buffer.alloc(8);
  if (lun < 256) b[1] = lun;
  else {
    b[0] = 0x40 | ((lun >> 8) & 0x3f);
    b[1] = lun & 0xff;
  }
  return b;
}

function bhs(opcode: number, immediate: boolean, flags: number, dataLength: number): Buffer {
  const b = Buffer.alloc(BHS);
  b[0] = (immediate ? 0x40 : 0) | (opcode & 0x3f);
  b[1] = flags;
  b[5] = (dataLength >>> 16) & 0xff;
  b[6] = (dataLength >>> 8) & 0xff;
  b[7] = dataLength & 0xff;
  return b;
}

/** A whole PDU on the wire: BHS, AHS, header digest, data, zero padding, data digest. */
export function frame(header: Buffer, data: Buffer = Buffer.alloc(0), opts: { ahs?: Buffer; headerDigest?: boolean; dataDigest?: boolean; badHeaderDigest?: boolean; badDataDigest?: boolean } = {}): Buffer {
  const parts: Buffer[] = [header];
  if (opts.ahs) parts.push(opts.ahs);
  if (opts.headerDigest) parts.push(le32(crc(header, opts.ahs ?? Buffer.alloc(0)) ^ (opts.badHeaderDigest ? 1 : 0)));
  if (data.length) {
    const pad = ZERO.subarray(0, pad4(data.length));
    parts.push(data, pad);
    if (opts.dataDigest) parts.push(le32(crc(data, pad) ^ (opts.badDataDigest ? 0x80000000 : 0)));
  }
  return Buffer.concat(parts);
}

// ---- Initiator PDUs (RFC 7143 §11) ------------------------------------------------------------

export interface LoginRequest {
  transit: boolean;
  cont?: boolean;
  csg: number;
  nsg: number;
  versionMax?: number;
  versionMin?: number;
  isid: Buffer;
  tsih?: number;
  itt: number;
  cid?: number;
  cmdSN: number;
  expStatSN: number;
}

/** §11.12: Login Request (always immediate). */
export function loginRequest(f: LoginRequest, dataLength: number): Buffer {
  const flags = (f.transit ? 0x80 : 0) | (f.cont ? 0x40 : 0) | ((f.csg & 3) << 2) | (f.nsg & 3);
  const b = bhs(0x03, true, flags, dataLength);
  b[2] = f.versionMax ?? 0;
  b[3] = f.versionMin ?? 0;
  f.isid.copy(b, 8, 0, 6);
  b.writeUInt16BE(f.tsih ?? 0, 14);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt16BE(f.cid ?? 0, 20);
  b.writeUInt32BE(f.cmdSN >>> 0, 24);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  return b;
}

export interface ScsiCommand {
  immediate?: boolean;
  final?: boolean;
  read?: boolean;
  write?: boolean;
  attr?: number;
  lun?: number;
  itt: number;
  edtl: number;
  cmdSN: number;
  expStatSN: number;
  cdb: Buffer;
  ahsWords?: number;
}

/** §11.3: SCSI Command. */
export function scsiCommand(f: ScsiCommand, dataLength: number): Buffer {
  const flags = (f.final === false ? 0 : 0x80) | (f.read ? 0x40 : 0) | (f.write ? 0x20 : 0) | ((f.attr ?? 1) & 7);
  const b = bhs(0x01, !!f.immediate, flags, dataLength);
  b[4] = f.ahsWords ?? 0;
  lunField(f.lun ?? 0).copy(b, 8);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE(f.edtl >>> 0, 20);
  b.writeUInt32BE(f.cmdSN >>> 0, 24);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  f.cdb.copy(b, 32, 0, Math.min(16, f.cdb.length));
  return b;
}

export interface DataOut {
  final: boolean;
  lun?: number;
  itt: number;
  ttt: number;
  expStatSN: number;
  dataSN: number;
  bufferOffset: number;
}

/** §11.7: SCSI Data-Out. */
export function dataOut(f: DataOut, dataLength: number): Buffer {
  const b = bhs(0x05, false, f.final ? 0x80 : 0, dataLength);
  lunField(f.lun ?? 0).copy(b, 8);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE(f.ttt >>> 0, 20);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  b.writeUInt32BE(f.dataSN >>> 0, 36);
  b.writeUInt32BE(f.bufferOffset >>> 0, 40);
  return b;
}

/** §11.18: NOP-Out. ITT 0xffffffff with the target's TTT answers a NOP-In ping. */
export function nopOut(f: { immediate?: boolean; itt: number; ttt?: number; lun?: number; cmdSN: number; expStatSN: number }, dataLength: number): Buffer {
  const b = bhs(0x00, f.immediate ?? true, 0x80, dataLength);
  lunField(f.lun ?? 0).copy(b, 8);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE((f.ttt ?? 0xffffffff) >>> 0, 20);
  b.writeUInt32BE(f.cmdSN >>> 0, 24);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  return b;
}

/** §11.10: Text Request. */
export function textRequest(f: { final?: boolean; cont?: boolean; itt: number; ttt?: number; cmdSN: number; expStatSN: number }, dataLength: number): Buffer {
  const b = bhs(0x04, true, (f.final === false ? 0 : 0x80) | (f.cont ? 0x40 : 0), dataLength);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE((f.ttt ?? 0xffffffff) >>> 0, 20);
  b.writeUInt32BE(f.cmdSN >>> 0, 24);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  return b;
}

/** §11.14: Logout Request. */
export function logoutRequest(f: { reason: number; itt: number; cid?: number; cmdSN: number; expStatSN: number }): Buffer {
  const b = bhs(0x06, true, 0x80 | (f.reason & 0x7f), 0);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt16BE(f.cid ?? 0, 20);
  b.writeUInt32BE(f.cmdSN >>> 0, 24);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  return b;
}

/** §11.5: Task Management Function Request. */
export function tmfRequest(f: { fn: number; lun?: number; itt: number; refItt: number; cmdSN: number; expStatSN: number; refCmdSN: number }): Buffer {
  const b = bhs(0x02, true, 0x80 | (f.fn & 0x7f), 0);
  lunField(f.lun ?? 0).copy(b, 8);
  b.writeUInt32BE(f.itt >>> 0, 16);
  b.writeUInt32BE(f.refItt >>> 0, 20);
  b.writeUInt32BE(f.cmdSN >>> 0, 24);
  b.writeUInt32BE(f.expStatSN >>> 0, 28);
  b.writeUInt32BE(f.refCmdSN >>> 0, 32);
  return b;
}

// ---- Target PDUs, decoded field by field -------------------------------------------------------

/** Every field of a target PDU's BHS that RFC 7143 defines for its opcode (others absent). */
export interface TargetPdu {
  opcode: number;
  final: boolean;
  ahsLength: number;
  dataLength: number;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  /** Bytes 8..15 (LUN, or ISID+TSIH for a login response). */
  lunField: Buffer;
  ttt?: number;
  // Login Response (§11.13)
  transit?: boolean;
  cont?: boolean;
  csg?: number;
  nsg?: number;
  versionMax?: number;
  versionActive?: number;
  isid?: Buffer;
  tsih?: number;
  statusClass?: number;
  statusDetail?: number;
  // SCSI Response (§11.4) / Data-In (§11.7)
  response?: number;
  status?: number;
  bidiOverflow?: boolean;
  bidiUnderflow?: boolean;
  overflow?: boolean;
  underflow?: boolean;
  residual?: number;
  bidiResidual?: number;
  expDataSN?: number;
  ack?: boolean;
  hasStatus?: boolean;
  dataSN?: number;
  bufferOffset?: number;
  // R2T (§11.8)
  r2tSN?: number;
  desiredLength?: number;
  // Logout Response (§11.15)
  time2Wait?: number;
  time2Retain?: number;
  // Reject (§11.17)
  reason?: number;
  // Async Message (§11.9)
  asyncEvent?: number;
  asyncVCode?: number;
  parameter1?: number;
  parameter2?: number;
  parameter3?: number;
}

export function decodeTargetBhs(b: Buffer): TargetPdu {
  const op = b[0] & 0x3f;
  const p: TargetPdu = {
    opcode: op,
    final: (b[1] & 0x80) !== 0,
    ahsLength: b[4] * 4,
    dataLength: (b[5] << 16) | (b[6] << 8) | b[7],
    lunField: Buffer.from(b.subarray(8, 16)),
    itt: b.readUInt32BE(16),
    statSN: b.readUInt32BE(24),
    expCmdSN: b.readUInt32BE(28),
    maxCmdSN: b.readUInt32BE(32),
  };
  switch (op) {
    case 0x23: // Login Response
      p.transit = (b[1] & 0x80) !== 0;
      p.cont = (b[1] & 0x40) !== 0;
      p.csg = (b[1] >> 2) & 3;
      p.nsg = b[1] & 3;
      p.versionMax = b[2];
      p.versionActive = b[3];
      p.isid = Buffer.from(b.subarray(8, 14));
      p.tsih = b.readUInt16BE(14);
      p.statusClass = b[36];
      p.statusDetail = b[37];
      break;
    case 0x21: // SCSI Response
      p.bidiOverflow = (b[1] & 0x10) !== 0;
      p.bidiUnderflow = (b[1] & 0x08) !== 0;
      p.overflow = (b[1] & 0x04) !== 0;
      p.underflow = (b[1] & 0x02) !== 0;
      p.response = b[2];
      p.status = b[3];
      p.expDataSN = b.readUInt32BE(36);
      p.bidiResidual = b.readUInt32BE(40);
      p.residual = b.readUInt32BE(44);
      break;
    case 0x25: // Data-In
      p.ack = (b[1] & 0x40) !== 0;
      p.overflow = (b[1] & 0x04) !== 0;
      p.underflow = (b[1] & 0x02) !== 0;
      p.hasStatus = (b[1] & 0x01) !== 0;
      p.status = b[3];
      p.ttt = b.readUInt32BE(20);
      p.dataSN = b.readUInt32BE(36);
      p.bufferOffset = b.readUInt32BE(40);
      p.residual = b.readUInt32BE(44);
      break;
    case 0x31: // R2T
      p.ttt = b.readUInt32BE(20);
      p.r2tSN = b.readUInt32BE(36);
      p.bufferOffset = b.readUInt32BE(40);
      p.desiredLength = b.readUInt32BE(44);
      break;
    case 0x20: // NOP-In
    case 0x24: // Text Response
      p.cont = (b[1] & 0x40) !== 0;
      p.ttt = b.readUInt32BE(20);
      break;
    case 0x22: // Task Management Response
      p.response = b[2];
      break;
    case 0x26: // Logout Response
      p.response = b[2];
      p.time2Wait = b.readUInt16BE(40);
      p.time2Retain = b.readUInt16BE(42);
      break;
    case 0x3f: // Reject
      p.reason = b[2];
      break;
    case 0x32: // Async Message
      p.asyncEvent = b[36];
      p.asyncVCode = b[37];
      p.parameter1 = b.readUInt16BE(38);
      p.parameter2 = b.readUInt16BE(40);
      p.parameter3 = b.readUInt16BE(42);
      break;
  }
  return p;
}

// ---- Captured bytes -------------------------------------------------------------------------------

export interface WalkedFrame {
  offset: number;
  opcode: number;
  dataLength: number;
  /** The header digest was present and correct (undefined when not expected). */
  headerDigestOk?: boolean;
  /** The data digest was present and correct (undefined when not expected or no data). */
  dataDigestOk?: boolean;
  bhs: Buffer;
  data: Buffer;
}

/**
 * Walk captured bytes of one direction: PDUs before `digestsFrom` (a frame index) are parsed
 * without digests, later ones with the given digests. Stops at the first incomplete frame.
 */
export function walkFrames(bytes: Buffer, opts: { digestsFromFrame: number; headerDigest: boolean; dataDigest: boolean }): WalkedFrame[] {
  const out: WalkedFrame[] = [];
  let off = 0;
  while (off + BHS <= bytes.length) {
    const digests = out.length >= opts.digestsFromFrame;
    const hd = digests && opts.headerDigest;
    const dd = digests && opts.dataDigest;
    const b = bytes.subarray(off, off + BHS);
    const ahs = b[4] * 4;
    const dlen = (b[5] << 16) | (b[6] << 8) | b[7];
    const pad = pad4(dlen);
    const total = BHS + ahs + (hd ? 4 : 0) + dlen + pad + (dd && dlen ? 4 : 0);
    if (off + total > bytes.length) break;
    let p = off + BHS;
    const ahsBytes = bytes.subarray(p, p + ahs);
    p += ahs;
    const f: WalkedFrame = { offset: off, opcode: b[0] & 0x3f, dataLength: dlen, bhs: Buffer.from(b), data: Buffer.alloc(0) };
    if (hd) {
      f.headerDigestOk = bytes.readUInt32LE(p) === crc(b, ahsBytes);
      p += 4;
    }
    f.data = Buffer.from(bytes.subarray(p, p + dlen));
    const padded = bytes.subarray(p, p + dlen + pad);
    p += dlen + pad;
    if (dd && dlen) {
      f.dataDigestOk = bytes.readUInt32LE(p) === crc(padded);
      p += 4;
    }
    out.push(f);
    off = p;
  }
  return out;
}

// ---- Text keys ----------------------------------------------------------------------------------

export function textData(pairs: Record<string, string> | Array<[string, string]>): Buffer {
  const list = Array.isArray(pairs) ? pairs : Object.entries(pairs);
  return Buffer.from(list.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8');
}

export function parseTextData(data: Buffer): Map<string, string> {
  const m = new Map<string, string>();
  for (const item of data.toString('utf8').split('\0')) {
    if (!item) continue;
    const i = item.indexOf('=');
    m.set(item.slice(0, i), item.slice(i + 1));
  }
  return m;
}

/** CDBs the raw initiator uses. */
export const cdb = {
  testUnitReady: (): Buffer => Buffer.alloc(6),
  inquiry: (alloc: number): Buffer => Buffer.from([0x12, 0, 0, (alloc >> 8) & 0xff, alloc & 0xff, 0]),
  readCapacity10: (): Buffer => Buffer.from([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  read10: (lba: number, blocks: number): Buffer => {
    const c = Buffer.alloc(10);
    c[0] = 0x28;
    c.writeUInt32BE(lba >>> 0, 2);
    c.writeUInt16BE(blocks, 7);
    return c;
  },
  write10: (lba: number, blocks: number): Buffer => {
    const c = Buffer.alloc(10);
    c[0] = 0x2a;
    c.writeUInt32BE(lba >>> 0, 2);
    c.writeUInt16BE(blocks, 7);
    return c;
  },
};
