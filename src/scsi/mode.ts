/**
 * MODE SENSE 6/10 and MODE SELECT 6/10 (SPC-4 §6.11-6.14) with the caching (0x08), control
 * (0x0A) and informational exceptions (0x1C) pages. Changeable: WCE, D_SENSE, SWP.
 */
import { Asc, ModePage, Op, PageControl, SenseKey, Status } from './constants';
import type { LogicalUnit, ModeState } from './lu';
import type { ScsiResult } from './port';
import { SenseError, invalidCdb, invalidParam, paramListLengthError } from './sense';

const DEFAULT_MODE: Readonly<ModeState> = Object.freeze({ wce: true, dsense: false, swp: false });
/** Which fields are changeable (a ModeState where true means changeable). */
const CHANGEABLE: Readonly<ModeState> = Object.freeze({ wce: true, dsense: true, swp: true });

/** Pages in ascending page-code order (for 0x3F "all pages"). */
const PAGES = [ModePage.ReadWriteErrorRecovery, ModePage.Caching, ModePage.Control, ModePage.InformationalExceptions] as const;

/** Build one page (SPC-4 §7.5.7 format) for the given values; `changeable` gives the mask form. */
function buildPage(code: number, v: Readonly<ModeState>, changeable: boolean): Buffer {
  switch (code) {
    case ModePage.ReadWriteErrorRecovery: {
      // SBC-3 §6.5.9: nothing changeable; AWRE/ARRE off, retry counts 0.
      const b = Buffer.alloc(12);
      b[0] = code;
      b[1] = 10;
      return b;
    }
    case ModePage.Caching: {
      // SBC-3 §6.5.5
      const b = Buffer.alloc(20);
      b[0] = code;
      b[1] = 18;
      if (v.wce) b[2] |= 0x04; // WCE (RCD=0: read cache on)
      return b;
    }
    case ModePage.Control: {
      // SPC-4 §7.5.8
      const b = Buffer.alloc(12);
      b[0] = code;
      b[1] = 10;
      if (v.dsense) b[2] |= 0x04; // D_SENSE
      if (!changeable) {
        b[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering; QERR 00
        b.writeUInt16BE(0xffff, 8); // BUSY TIMEOUT PERIOD: unlimited
      }
      if (v.swp) b[4] |= 0x08; // SWP
      return b;
    }
    case ModePage.InformationalExceptions: {
      // SPC-4 §7.5.11: MRIE 0 (no reporting)
      const b = Buffer.alloc(12);
      b[0] = code;
      b[1] = 10;
      return b;
    }
    default:
      throw new Error(`no mode page ${code}`);
  }
}

function pageValues(lu: LogicalUnit, pc: number): { v: Readonly<ModeState>; changeable: boolean } {
  switch (pc) {
    case PageControl.Changeable:
      return { v: CHANGEABLE, changeable: true };
    case PageControl.Default:
      return { v: DEFAULT_MODE, changeable: false };
    default:
      return { v: lu.mode, changeable: false };
  }
}

/** MODE SENSE (6) and (10). */
export function modeSense(lu: LogicalUnit, cdb: Buffer): ScsiResult {
  const ten = cdb[0] === Op.ModeSense10;
  const dbd = (cdb[1] & 0x08) !== 0;
  const llbaa = ten && (cdb[1] & 0x10) !== 0;
  const pc = cdb[2] >> 6;
  const pageCode = cdb[2] & 0x3f;
  const subpage = cdb[3];
  const alloc = ten ? cdb.readUInt16BE(7) : cdb[4];
  if (pc === PageControl.Saved) throw new SenseError(SenseKey.IllegalRequest, Asc.SavingParametersNotSupported, { inCdb: true, byte: 2, bit: 7 });
  let codes: readonly number[];
  if (pageCode === ModePage.AllPages) {
    if (subpage !== 0 && subpage !== 0xff) throw invalidCdb(3);
    codes = PAGES;
  } else {
    if (!(PAGES as readonly number[]).includes(pageCode)) throw invalidCdb(2, 5);
    if (subpage !== 0 && subpage !== 0xff) throw invalidCdb(3);
    codes = [pageCode];
  }
  const { v, changeable } = pageValues(lu, pc);
  const pages = Buffer.concat(codes.map((c) => buildPage(c, v, changeable)));
  const bdLen = dbd ? 0 : llbaa ? 16 : 8;
  const hdrLen = ten ? 8 : 4;
  const b = Buffer.alloc(hdrLen + bdLen + pages.length);
  // Device-specific parameter (SBC-3 §6.5.1): WP, DPOFUA.
  const dsp = (lu.writeProtected ? 0x80 : 0) | 0x10;
  if (ten) {
    b.writeUInt16BE(b.length - 2, 0);
    b[3] = dsp;
    if (llbaa && !dbd) b[4] = 0x01; // LONGLBA
    b.writeUInt16BE(bdLen, 6);
  } else {
    b[0] = Math.min(255, b.length - 1);
    b[2] = dsp;
    b[3] = bdLen;
  }
  if (bdLen === 8) {
    // Short LBA mode parameter block descriptor (SBC-3 §6.4.2).
    b.writeUInt32BE(lu.blocks > 0xffffffff ? 0xffffffff : lu.blocks, hdrLen);
    b.writeUInt32BE(lu.blockSize & 0xffffff, hdrLen + 4); // density code 0, block length (24 bits)
  } else if (bdLen === 16) {
    b.writeUInt32BE(Math.floor(lu.blocks / 0x1_0000_0000), hdrLen);
    b.writeUInt32BE(lu.blocks >>> 0, hdrLen + 4);
    b.writeUInt32BE(lu.blockSize, hdrLen + 12);
  }
  pages.copy(b, hdrLen + bdLen);
  return { status: Status.Good, dataIn: alloc < b.length ? b.subarray(0, alloc) : b };
}

/**
 * MODE SELECT (6) and (10). Applies the changeable fields; any other field must equal its
 * current value (SPC-4 §6.9: else INVALID FIELD IN PARAMETER LIST). Returns whether anything changed.
 */
export function modeSelect(lu: LogicalUnit, cdb: Buffer, data: Buffer | undefined): { result: ScsiResult; changed: boolean } {
  const ten = cdb[0] === Op.ModeSelect10;
  const pf = (cdb[1] & 0x10) !== 0;
  const sp = (cdb[1] & 0x01) !== 0;
  const len = ten ? cdb.readUInt16BE(7) : cdb[4];
  if (sp) throw invalidCdb(1, 0); // saved pages not supported
  if (len === 0) return { result: { status: Status.Good }, changed: false };
  if (!pf) throw invalidCdb(1, 4);
  const hdrLen = ten ? 8 : 4;
  if (!data || data.length < len) throw paramListLengthError();
  if (len < hdrLen) throw paramListLengthError();
  const p = data.subarray(0, len);
  const bdLen = ten ? p.readUInt16BE(6) : p[3];
  const longLba = ten && (p[4] & 0x01) !== 0;
  if (hdrLen + bdLen > len) throw paramListLengthError();
  if (bdLen !== 0) {
    const each = longLba ? 16 : 8;
    if (bdLen !== each) throw invalidParam(ten ? 6 : 3);
    const blen = longLba ? p.readUInt32BE(hdrLen + 12) : (p[hdrLen + 5] << 16) | p.readUInt16BE(hdrLen + 6);
    if (blen !== lu.blockSize) throw invalidParam(hdrLen + (longLba ? 12 : 5));
  }
  const next: ModeState = { ...lu.mode };
  let o = hdrLen + bdLen;
  while (o < len) {
    if (o + 2 > len) throw paramListLengthError();
    const code = p[o] & 0x3f;
    if (p[o] & 0x40) throw invalidParam(o, 6); // SPF: no subpages
    const plen = p[o + 1];
    if (o + 2 + plen > len) throw paramListLengthError();
    if (!(PAGES as readonly number[]).includes(code)) throw invalidParam(o);
    const current = buildPage(code, next, false);
    if (plen !== current.length - 2) throw invalidParam(o + 1);
    const mask = buildPage(code, CHANGEABLE, true);
    for (let i = 2; i < current.length; i++) {
      const got = p[o + i];
      if ((got & ~mask[i] & 0xff) !== (current[i] & ~mask[i] & 0xff)) throw invalidParam(o + i);
    }
    if (code === ModePage.Caching) next.wce = (p[o + 2] & 0x04) !== 0;
    if (code === ModePage.Control) {
      next.dsense = (p[o + 2] & 0x04) !== 0;
      next.swp = (p[o + 4] & 0x08) !== 0;
    }
    o += 2 + plen;
  }
  const changed = next.wce !== lu.mode.wce || next.dsense !== lu.mode.dsense || next.swp !== lu.mode.swp;
  Object.assign(lu.mode, next);
  return { result: { status: Status.Good, dataOutLength: len }, changed };
}
