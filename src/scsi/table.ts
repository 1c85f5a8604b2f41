/**
 * The 256-entry opcode table (the tgt `sbc.c` pattern): each slot names the command, its
 * handler, its persistent-reservation access class, whether an SPC-2 reservation held by
 * another nexus lets it through, and its CDB usage data for REPORT SUPPORTED OPERATION CODES.
 * Empty slots are INVALID COMMAND OPERATION CODE. Opcodes with service actions hold a 32-entry
 * sub-table.
 */
import { invalidCdb as invalidCdbAt } from './sense';
import { Asc, Op, SaIn16, SaMaintIn, SaRcr, SaXcopy, PrIn as PrInSa } from './constants';
import type { Handler } from './env';
import { inquiry } from './inquiry';
import { modeSelect, modeSense } from './mode';
import { Access } from './pr';
import * as sbc from './sbc';
import * as spc from './spc';
import { extendedCopy, receiveCopyResults } from './xcopy';

export interface CommandEntry {
  readonly name: string;
  readonly handler: Handler;
  readonly access: Access;
  /** Allowed while another I_T nexus holds an SPC-2 RESERVE (SPC-2 §5.5.1). */
  readonly spc2Allowed: boolean;
  /** CDB usage data (SPC-4 §6.35.3): byte 0 is the opcode, byte 1 carries the service action. */
  readonly usage: readonly number[];
  /** Nominal / recommended timeouts in seconds for the RCTD timeouts descriptor. */
  readonly timeoutSec: number;
}

export interface OpcodeSlot {
  readonly opcode: number;
  /** The command, for opcodes without service actions. */
  readonly entry?: CommandEntry;
  /** By service action, for opcodes with them. */
  readonly serviceActions?: readonly (CommandEntry | undefined)[];
}

const ff4 = [0xff, 0xff, 0xff, 0xff];
const ff8 = [...ff4, ...ff4];

function cmd(name: string, handler: Handler, access: Access, usage: number[], opts: { spc2?: boolean; timeoutSec?: number } = {}): CommandEntry {
  return Object.freeze({ name, handler, access, usage: Object.freeze(usage), spc2Allowed: opts.spc2 ?? false, timeoutSec: opts.timeoutSec ?? 30 });
}

const modeSelectHandler: Handler = (lu, req, env) => {
  const { result, changed } = modeSelect(lu, req.cdb, req.dataOut);
  // SPC-4 §7.5.1: the other I_T nexuses learn of the change by a unit attention.
  if (changed) lu.ua.addAll(Asc.ModeParametersChanged, env.itn(req.nexus));
  return result;
};

/** INQUIRY, REQUEST SENSE and REPORT LUNS also run without an LU; `target.ts` intercepts them. */
const interceptedByTarget: Handler = () => {
  throw new Error('handled by the target');
};

const rw10 = (op: number, b1: number) => [op, b1, ...ff4, 0x1f, 0xff, 0xff, 0x07];
const rw12 = (op: number, b1: number) => [op, b1, ...ff4, ...ff4, 0x1f, 0x07];
const rw16 = (op: number, b1: number) => [op, b1, ...ff8, ...ff4, 0x1f, 0x07];

const R = Access.Read;
const W = Access.Write;
const N = Access.None;

const plain: [number, CommandEntry][] = [
  [Op.TestUnitReady, cmd('TEST_UNIT_READY', spc.testUnitReady, N, [Op.TestUnitReady, 0, 0, 0, 0, 0x07])],
  [Op.RequestSense, cmd('REQUEST_SENSE', interceptedByTarget, N, [Op.RequestSense, 0x01, 0, 0, 0xff, 0x07], { spc2: true })],
  [Op.Read6, cmd('READ_6', sbc.read, R, [Op.Read6, 0x1f, 0xff, 0xff, 0xff, 0x07])],
  [Op.Write6, cmd('WRITE_6', sbc.write, W, [Op.Write6, 0x1f, 0xff, 0xff, 0xff, 0x07])],
  [Op.Inquiry, cmd('INQUIRY', interceptedByTarget, N, [Op.Inquiry, 0x01, 0xff, 0xff, 0xff, 0x07], { spc2: true })],
  [Op.ModeSelect6, cmd('MODE_SELECT_6', modeSelectHandler, W, [Op.ModeSelect6, 0x11, 0, 0, 0xff, 0x07])],
  [Op.Reserve6, cmd('RESERVE_6', spc.reserve, N, [Op.Reserve6, 0, 0, 0, 0, 0x07])],
  [Op.Release6, cmd('RELEASE_6', spc.release, N, [Op.Release6, 0, 0, 0, 0, 0x07], { spc2: true })],
  [Op.ModeSense6, cmd('MODE_SENSE_6', (lu, req) => modeSense(lu, req.cdb), R, [Op.ModeSense6, 0x08, 0xff, 0xff, 0xff, 0x07])],
  [Op.StartStopUnit, cmd('START_STOP_UNIT', spc.startStopUnit, N, [Op.StartStopUnit, 0x01, 0, 0x0f, 0xf7, 0x07])],
  [Op.PreventAllowMediumRemoval, cmd('PREVENT_ALLOW_MEDIUM_REMOVAL', spc.preventAllow, N, [Op.PreventAllowMediumRemoval, 0, 0, 0, 0x03, 0x07])],
  [Op.ReadCapacity10, cmd('READ_CAPACITY_10', sbc.readCapacity10, N, [Op.ReadCapacity10, 0, ...ff4, 0, 0, 0x01, 0x07])],
  [Op.Read10, cmd('READ_10', sbc.read, R, rw10(Op.Read10, 0xfa))],
  [Op.Write10, cmd('WRITE_10', sbc.write, W, rw10(Op.Write10, 0xfa))],
  [Op.WriteAndVerify10, cmd('WRITE_AND_VERIFY_10', sbc.writeAndVerify, W, rw10(Op.WriteAndVerify10, 0xf2))],
  [Op.Verify10, cmd('VERIFY_10', sbc.verify, R, rw10(Op.Verify10, 0xf6))],
  [Op.PreFetch10, cmd('PRE_FETCH_10', sbc.preFetch, R, rw10(Op.PreFetch10, 0x02))],
  [Op.SynchronizeCache10, cmd('SYNCHRONIZE_CACHE_10', sbc.synchronizeCache, W, rw10(Op.SynchronizeCache10, 0x02), { timeoutSec: 60 })],
  [Op.WriteSame10, cmd('WRITE_SAME_10', sbc.writeSame, W, rw10(Op.WriteSame10, 0xf8), { timeoutSec: 120 })],
  [Op.Unmap, cmd('UNMAP', sbc.unmap, W, [Op.Unmap, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x07], { timeoutSec: 120 })],
  [Op.ModeSelect10, cmd('MODE_SELECT_10', modeSelectHandler, W, [Op.ModeSelect10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07])],
  [Op.Reserve10, cmd('RESERVE_10', spc.reserve, N, [Op.Reserve10, 0, 0, 0, 0, 0, 0, 0, 0, 0x07])],
  [Op.Release10, cmd('RELEASE_10', spc.release, N, [Op.Release10, 0, 0, 0, 0, 0, 0, 0, 0, 0x07], { spc2: true })],
  [Op.ModeSense10, cmd('MODE_SENSE_10', (lu, req) => modeSense(lu, req.cdb), R, [Op.ModeSense10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07])],
  [Op.Read16, cmd('READ_16', sbc.read, R, rw16(Op.Read16, 0xfa))],
  [Op.CompareAndWrite, cmd('COMPARE_AND_WRITE', sbc.compareAndWrite, W, [Op.CompareAndWrite, 0xfa, ...ff8, 0, 0, 0, 0xff, 0x1f, 0x07])],
  [Op.Write16, cmd('WRITE_16', sbc.write, W, rw16(Op.Write16, 0xfa))],
  [Op.OrWrite, cmd('ORWRITE_16', sbc.orWrite, W, rw16(Op.OrWrite, 0xfa))],
  [Op.WriteAndVerify16, cmd('WRITE_AND_VERIFY_16', sbc.writeAndVerify, W, rw16(Op.WriteAndVerify16, 0xf2))],
  [Op.Verify16, cmd('VERIFY_16', sbc.verify, R, rw16(Op.Verify16, 0xf6))],
  [Op.PreFetch16, cmd('PRE_FETCH_16', sbc.preFetch, R, rw16(Op.PreFetch16, 0x02))],
  [Op.SynchronizeCache16, cmd('SYNCHRONIZE_CACHE_16', sbc.synchronizeCache, W, rw16(Op.SynchronizeCache16, 0x02), { timeoutSec: 60 })],
  [Op.WriteSame16, cmd('WRITE_SAME_16', sbc.writeSame, W, rw16(Op.WriteSame16, 0xf9), { timeoutSec: 120 })],
  [Op.ReportLuns, cmd('REPORT_LUNS', interceptedByTarget, N, [Op.ReportLuns, 0, 0xff, 0, 0, 0, ...ff4, 0, 0x07], { spc2: true })],
  [Op.Read12, cmd('READ_12', sbc.read, R, rw12(Op.Read12, 0xfa))],
  [Op.Write12, cmd('WRITE_12', sbc.write, W, rw12(Op.Write12, 0xfa))],
  [Op.WriteAndVerify12, cmd('WRITE_AND_VERIFY_12', sbc.writeAndVerify, W, rw12(Op.WriteAndVerify12, 0xf2))],
  [Op.Verify12, cmd('VERIFY_12', sbc.verify, R, rw12(Op.Verify12, 0xf6))],
];

const withSa: [number, [number, CommandEntry][]][] = [
  [Op.ServiceActionIn16, [
    [SaIn16.ReadCapacity16, cmd('READ_CAPACITY_16', sbc.readCapacity16, N, [Op.ServiceActionIn16, SaIn16.ReadCapacity16, 0, 0, 0, 0, 0, 0, 0, 0, ...ff4, 0, 0x07])],
    [SaIn16.GetLbaStatus, cmd('GET_LBA_STATUS', sbc.getLbaStatus, R, [Op.ServiceActionIn16, SaIn16.GetLbaStatus, ...ff8, ...ff4, 0, 0x07])],
  ]],
  [Op.MaintenanceIn, [
    [SaMaintIn.ReportTargetPortGroups, cmd('REPORT_TARGET_PORT_GROUPS', spc.reportTargetPortGroups, N, [Op.MaintenanceIn, 0xe0 | SaMaintIn.ReportTargetPortGroups, 0, 0, 0, 0, ...ff4, 0, 0x07], { spc2: true })],
    [SaMaintIn.ReportSupportedOpcodes, cmd('REPORT_SUPPORTED_OPERATION_CODES', (lu, req) => reportSupportedOpcodes(req.cdb), N, [Op.MaintenanceIn, SaMaintIn.ReportSupportedOpcodes, 0x87, 0xff, 0xff, 0xff, ...ff4, 0, 0x07], { spc2: true })],
  ]],
  [Op.PersistentReserveIn, [
    [PrInSa.ReadKeys, cmd('PERSISTENT_RESERVE_IN', spc.persistentReserveIn, N, [Op.PersistentReserveIn, PrInSa.ReadKeys, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07])],
    [PrInSa.ReadReservation, cmd('PERSISTENT_RESERVE_IN', spc.persistentReserveIn, N, [Op.PersistentReserveIn, PrInSa.ReadReservation, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07])],
    [PrInSa.ReportCapabilities, cmd('PERSISTENT_RESERVE_IN', spc.persistentReserveIn, N, [Op.PersistentReserveIn, PrInSa.ReportCapabilities, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07])],
    [PrInSa.ReadFullStatus, cmd('PERSISTENT_RESERVE_IN', spc.persistentReserveIn, N, [Op.PersistentReserveIn, PrInSa.ReadFullStatus, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07])],
  ]],
  [Op.PersistentReserveOut, [0, 1, 2, 3, 4, 5, 6].map((sa): [number, CommandEntry] => [
    sa,
    cmd('PERSISTENT_RESERVE_OUT', spc.persistentReserveOut, N, [Op.PersistentReserveOut, sa, 0xff, 0, 0, ...ff4, 0x07]),
  ])],
  [Op.ExtendedCopy, [
    [SaXcopy.Lid1, cmd('EXTENDED_COPY', extendedCopy, W, [Op.ExtendedCopy, SaXcopy.Lid1, 0, 0, 0, 0, 0, 0, 0, 0, ...ff4, 0, 0x07], { timeoutSec: 120 })],
  ]],
  [Op.ReceiveCopyResults, [
    [SaRcr.CopyStatus, cmd('RECEIVE_COPY_RESULTS', receiveCopyResults, R, [Op.ReceiveCopyResults, SaRcr.CopyStatus, 0xff, 0, 0, 0, 0, 0, 0, 0, ...ff4, 0, 0x07])],
    [SaRcr.OperatingParameters, cmd('RECEIVE_COPY_RESULTS', receiveCopyResults, R, [Op.ReceiveCopyResults, SaRcr.OperatingParameters, 0, 0, 0, 0, 0, 0, 0, 0, ...ff4, 0, 0x07])],
  ]],
];

/** The table: index by opcode. */
export const OPCODES: readonly OpcodeSlot[] = (() => {
  const t: OpcodeSlot[] = [];
  for (let i = 0; i < 256; i++) t.push({ opcode: i });
  for (const [op, e] of plain) t[op] = { opcode: op, entry: e };
  for (const [op, list] of withSa) {
    const sas: (CommandEntry | undefined)[] = new Array(32).fill(undefined);
    for (const [sa, e] of list) sas[sa] = e;
    t[op] = { opcode: op, serviceActions: Object.freeze(sas) };
  }
  return Object.freeze(t);
})();

/** The command of a CDB, or undefined for an unsupported opcode / service action. */
export function lookup(cdb: Buffer): CommandEntry | undefined {
  const slot = OPCODES[cdb[0]];
  if (slot.entry) return slot.entry;
  if (slot.serviceActions) return slot.serviceActions[cdb[1] & 0x1f];
  return undefined;
}

// ---- REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35) -----------------------------------------

function timeoutsDescriptor(e: CommandEntry): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(0x0a, 0);
  b.writeUInt32BE(e.timeoutSec, 4); // NOMINAL COMMAND PROCESSING TIMEOUT
  b.writeUInt32BE(e.timeoutSec * 2, 8); // RECOMMENDED COMMAND TIMEOUT
  return b;
}

function oneCommand(e: CommandEntry | undefined, rctd: boolean): Buffer {
  if (!e) {
    const b = Buffer.alloc(4);
    b[1] = 0x01; // SUPPORT 001b: not supported
    return b;
  }
  const usage = Buffer.from(e.usage);
  const b = Buffer.alloc(4 + usage.length + (rctd ? 12 : 0));
  b[1] = (rctd ? 0x80 : 0) | 0x03; // CTDP | SUPPORT 011b: supported per standard
  b.writeUInt16BE(usage.length, 2);
  usage.copy(b, 4);
  if (rctd) timeoutsDescriptor(e).copy(b, 4 + usage.length);
  return b;
}

export function reportSupportedOpcodes(cdb: Buffer) {
  const rctd = (cdb[2] & 0x80) !== 0;
  const options = cdb[2] & 0x07;
  const opcode = cdb[3];
  const sa = cdb.readUInt16BE(4);
  const alloc = cdb.readUInt32BE(6);
  let data: Buffer;
  switch (options) {
    case 0: {
      const parts: Buffer[] = [];
      for (const slot of OPCODES) {
        const list: [number, CommandEntry][] = slot.entry ? [[0, slot.entry]] : slot.serviceActions ? slot.serviceActions.flatMap((e, i): [number, CommandEntry][] => (e ? [[i, e]] : [])) : [];
        for (const [s, e] of list) {
          const d = Buffer.alloc(8 + (rctd ? 12 : 0));
          d[0] = slot.opcode;
          d.writeUInt16BE(s, 2);
          d[5] = (rctd ? 0x02 : 0) | (slot.serviceActions ? 0x01 : 0); // CTDP | SERVACTV
          d.writeUInt16BE(e.usage.length, 6);
          if (rctd) timeoutsDescriptor(e).copy(d, 8);
          parts.push(d);
        }
      }
      const body = Buffer.concat(parts);
      data = Buffer.alloc(4 + body.length);
      data.writeUInt32BE(body.length, 0);
      body.copy(data, 4);
      break;
    }
    case 1: {
      const slot = OPCODES[opcode];
      if (slot.serviceActions) throw invalidCdbAt(3);
      data = oneCommand(slot.entry, rctd);
      break;
    }
    case 2: {
      const slot = OPCODES[opcode];
      if (!slot.serviceActions) throw invalidCdbAt(3);
      data = oneCommand(sa < 32 ? slot.serviceActions[sa] : undefined, rctd);
      break;
    }
    case 3: {
      const slot = OPCODES[opcode];
      data = oneCommand(slot.serviceActions ? (sa < 32 ? slot.serviceActions[sa] : undefined) : sa === 0 ? slot.entry : undefined, rctd);
      break;
    }
    default:
      throw invalidCdbAt(2);
  }
  return { status: 0, dataIn: alloc < data.length ? data.subarray(0, alloc) : data };
}

