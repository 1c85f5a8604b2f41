/**
 * The SCSI target device: per-command dispatch (LUN check, unit attention, reservation
 * checks, opcode table, one try/catch turning failures into sense), task management effects,
 * nexus life cycle, statistics.
 */
import type { Logger } from '../common/logger';
import { VolumeError, VolumeErrorCode } from '../volume/errors';
import type { Volume } from '../volume/volume';
import { Asc, Op, SENSE_KEY_NAMES, SenseKey, Status } from './constants';
import { cdbLength } from './cdb';
import type { CopyPeer, CopyTargetLu, TargetEnv } from './env';
import { inquiry, standardInquiry } from './inquiry';
import { type BlockLimits, LogicalUnit, type ProductInfo } from './lu';
import { type Nexus, type ScsiRequest, type ScsiResult, type ScsiTarget, type ScsiTransport, TmfFunction, TmfResponse } from './port';
import { Access, prConflict } from './pr';
import { GOOD, RESERVATION_CONFLICT, SenseError, TASK_ABORTED, TaskAbortedError, buildSense, invalidCdb } from './sense';
import { reportLuns } from './spc';
import { type CommandEntry, OPCODES, lookup } from './table';
import { naaDesignator } from './vpd';

export interface LogicalUnitConfig {
  lun: number;
  volume: Volume;
  /** Overrides of the target-wide product identification. */
  vendorId?: string;
  productId?: string;
  revision?: string;
}

export interface ScsiTargetOptions {
  /** iSCSI target name (VPD 0x83 SCSI name string designators). */
  targetName: string;
  luns: LogicalUnitConfig[];
  /** T10 vendor identification, 8 ASCII characters (padded). Default 'OFFSITE '. */
  vendorId?: string;
  /** Product identification, 16 ASCII characters (padded). Default 'VOLUME'. */
  productId?: string;
  /** Product revision level, 4 ASCII characters. Default '0001'. */
  revision?: string;
  /** Durable per-LU state (persistent reservations): one file per LU, replaced atomically. */
  stateDir: string;
  /**
   * The other target of the appliance holding an LU with this NAA designator (16 bytes), for
   * EXTENDED COPY between targets. That target lends the LU only to an initiator port logged
   * in to it, under that nexus's reservations (see `CopyPeer`).
   */
  copyPeerByDesignator?: (naa: Buffer) => CopyPeer | undefined;
  logger?: Logger;
  /** Called after every command with its name, SAM status and duration (latency histograms). */
  onCommandComplete?: (name: string, status: number, durationNs: bigint) => void;
  /** Overrides of the advertised/enforced block limits (tests). */
  limits?: Partial<BlockLimits>;
}

export interface ScsiStats {
  /** Commands by operation name (e.g. READ_10, or UNSUPPORTED_0xNN). */
  commands: Record<string, number>;
  bytesRead: number;
  bytesWritten: number;
  /** CHECK CONDITIONs by sense key name. */
  errorsBySenseKey: Record<string, number>;
  reservationConflicts: number;
  unitAttentions: number;
}

/** What the appliance holds of a target: the port iSCSI calls, plus statistics, capacity changes (a grown volume) and close. */
export type ScsiTargetHandle = ScsiTarget & CopyPeer & { stats(): ScsiStats; capacityChanged(): void; close(): Promise<void> };

const MAX_TRANSFER_BYTES = 32 * 1024 * 1024;

function defaultLimits(blockSize: number, o: Partial<BlockLimits> | undefined): BlockLimits {
  return {
    maxTransferBlocks: o?.maxTransferBlocks ?? MAX_TRANSFER_BYTES / blockSize,
    optimalTransferBlocks: o?.optimalTransferBlocks ?? (1024 * 1024) / blockSize,
    maxWriteSameBlocks: o?.maxWriteSameBlocks ?? (1024 * 1024 * 1024) / blockSize,
    maxUnmapBlocks: o?.maxUnmapBlocks ?? 1024 * 1024,
    maxUnmapDescriptors: o?.maxUnmapDescriptors ?? 256,
    maxCompareAndWriteBlocks: o?.maxCompareAndWriteBlocks ?? 255,
  };
}

function pad(s: string, n: number): string {
  return s.replace(/[^\x20-\x7e]/g, ' ').slice(0, n).padEnd(n, ' ');
}

/** Commands a pending unit attention does not block (SAM-5 §5.14). */
function uaExempt(opcode: number): boolean {
  return opcode === Op.Inquiry || opcode === Op.ReportLuns || opcode === Op.RequestSense;
}

const UNSUPPORTED_NAMES: string[] = Array.from({ length: 256 }, (_, i) => `UNSUPPORTED_0x${i.toString(16).padStart(2, '0')}`);

class Target implements ScsiTargetHandle, TargetEnv {
  readonly targetName: string;
  readonly luns = new Map<number, LogicalUnit>();
  readonly copyPeerByDesignator?: (naa: Buffer) => CopyPeer | undefined;
  readonly counters = { bytesRead: 0, bytesWritten: 0 };
  private readonly commandCounts = new Map<string, number>();
  private readonly senseKeyCounts = new Array<number>(16).fill(0);
  private reservationConflicts = 0;
  private unitAttentions = 0;
  private readonly itnCache = new WeakMap<Nexus, string>();
  /** Live sessions per I_T nexus key. */
  private readonly sessions = new Map<string, number>();
  private readonly product: ProductInfo;
  private readonly logger?: Logger;
  private readonly onComplete?: (name: string, status: number, durationNs: bigint) => void;
  private transport?: ScsiTransport;
  private closed = false;

  constructor(opts: ScsiTargetOptions) {
    this.targetName = opts.targetName;
    this.copyPeerByDesignator = opts.copyPeerByDesignator;
    this.logger = opts.logger;
    this.onComplete = opts.onCommandComplete;
    this.product = {
      vendorId: pad(opts.vendorId ?? 'OFFSITE', 8),
      productId: pad(opts.productId ?? 'VOLUME', 16),
      revision: pad(opts.revision ?? '0001', 4),
    };
    for (const c of opts.luns) {
      if (this.luns.has(c.lun)) throw new SenseConfigError(`duplicate LUN ${c.lun}`);
      if (!Number.isInteger(c.lun) || c.lun < 0 || c.lun > 16383) throw new SenseConfigError(`invalid LUN ${c.lun}`);
      const product: ProductInfo = {
        vendorId: c.vendorId ? pad(c.vendorId, 8) : this.product.vendorId,
        productId: c.productId ? pad(c.productId, 16) : this.product.productId,
        revision: c.revision ? pad(c.revision, 4) : this.product.revision,
      };
      this.luns.set(c.lun, new LogicalUnit(c.lun, c.volume, product, defaultLimits(c.volume.blockSize, opts.limits), opts.stateDir, opts.logger?.child({ lun: c.lun })));
    }
  }

  async open(): Promise<void> {
    for (const lu of this.luns.values()) {
      const st = await lu.prStore.load();
      if (st) lu.pr = st;
    }
  }

  itn(nexus: Nexus): string {
    let k = this.itnCache.get(nexus);
    if (k === undefined) {
      k = `${nexus.initiatorPortName}|${nexus.relativeTargetPortId}`;
      this.itnCache.set(nexus, k);
    }
    return k;
  }

  hasLun(lun: number): boolean {
    return this.luns.has(lun);
  }

  attachTransport(transport: ScsiTransport): void {
    this.transport = transport;
  }

  async abortNexusTasks(lun: number, itns: readonly string[]): Promise<void> {
    if (!this.transport) {
      this.logger?.warn({ lun, nexuses: itns }, 'PREEMPT AND ABORT without a transport: tasks in flight of the preempted nexuses are not aborted');
      return;
    }
    const victims = new Set(itns);
    await this.transport.abortNexusTasks(lun, (n) => victims.has(this.itn(n)));
  }

  /**
   * EXTENDED COPY issued at another target of the appliance names an LU of this one. Lent only
   * to an initiator port with a session here now: it logged in to this target, so passed its
   * initiator ACL and CHAP - the rule LIO adopted for CVE-2020-28374 (only LUs the issuing
   * initiator may reach). The copy then runs under that I_T nexus's reservations and unit
   * attentions here. In this product every target has one port, so that nexus differs from
   * the issuing one only by its target.
   */
  copyTargetFor(naa: Buffer, initiatorPortName: string): CopyTargetLu | undefined {
    if (this.closed) return undefined;
    const prefix = `${initiatorPortName}|`;
    let itn: string | undefined;
    for (const k of this.sessions.keys()) {
      if (k.startsWith(prefix)) {
        itn = k;
        break;
      }
    }
    if (itn === undefined) return undefined;
    for (const lu of this.luns.values()) if (naaDesignator(lu.volume).equals(naa)) return { lu, itn };
    return undefined;
  }

  async execute(req: ScsiRequest): Promise<ScsiResult> {
    const started = this.onComplete ? process.hrtime.bigint() : 0n;
    const cdb = req.cdb;
    const lu = this.luns.get(req.lun);
    let name: string;
    let result: ScsiResult;
    if (cdb.length === 0) {
      name = 'EMPTY_CDB';
      result = this.fail(lu, invalidCdb(0));
    } else {
      const entry = lookup(cdb);
      name = entry ? entry.name : UNSUPPORTED_NAMES[cdb[0]];
      try {
        result = await this.dispatch(lu, req, entry);
      } catch (e) {
        result = this.fail(lu, e, cdb[0]);
      }
    }
    this.commandCounts.set(name, (this.commandCounts.get(name) ?? 0) + 1);
    if (result.status === Status.CheckCondition && result.sense) this.senseKeyCounts[senseKeyOf(result.sense)]++;
    else if (result.status === Status.ReservationConflict) this.reservationConflicts++;
    if (this.onComplete) this.onComplete(name, result.status, process.hrtime.bigint() - started);
    return result;
  }

  private dispatch(lu: LogicalUnit | undefined, req: ScsiRequest, entry: CommandEntry | undefined): ScsiResult | Promise<ScsiResult> {
    const cdb = req.cdb;
    const opcode = cdb[0];
    const need = cdbLength(opcode);
    if (cdb.length < (need || 6)) throw invalidCdb(0);
    if (lu === undefined) return this.noLun(req);
    const itn = this.itn(req.nexus);
    // SAM-5 §5.14: a pending unit attention is reported instead of running the command.
    if (lu.ua.pending(itn) && !uaExempt(opcode)) {
      const ascq = lu.ua.take(itn)!;
      this.unitAttentions++;
      return { status: Status.CheckCondition, sense: buildSense(lu.mode.dsense, SenseKey.UnitAttention, ascq) };
    }
    if (opcode === Op.RequestSense) return this.requestSense(lu, req, itn);
    if (entry === undefined) {
      // SPC-4 §4.2.5.1: an unsupported service action of a supported opcode is an invalid field.
      if (OPCODES[opcode].serviceActions) throw invalidCdb(1, 4);
      throw new SenseError(SenseKey.IllegalRequest, Asc.InvalidCommandOperationCode, { inCdb: true, byte: 0 });
    }
    // SAM-5 §5.3: NACA in the CONTROL byte is not supported.
    if (need > 0 && (cdb[need - 1] & 0x04) !== 0) throw invalidCdb(need - 1, 2);
    // SPC-2 reservation held by another nexus (SPC-2 §5.5.1).
    if (lu.spc2.conflicts(itn) && !entry.spc2Allowed) return RESERVATION_CONFLICT;
    // Persistent reservations (SPC-4 §5.12.1 Table 63).
    if (entry.access !== Access.None && lu.pr.reservation !== undefined && prConflict(lu.pr, itn, entry.access)) return RESERVATION_CONFLICT;
    if (opcode === Op.Inquiry) return inquiry(lu, cdb, req.nexus, this.targetName);
    if (opcode === Op.ReportLuns) return reportLuns(lu, req, this);
    return entry.handler(lu, req, this);
  }

  /** A LUN this target does not have (SPC-4 §6.6.2, SAM-5 §5.9.?). */
  private noLun(req: ScsiRequest): ScsiResult {
    const cdb = req.cdb;
    switch (cdb[0]) {
      case Op.Inquiry: {
        if (cdb[1] & 0x01) throw new SenseError(SenseKey.IllegalRequest, Asc.LogicalUnitNotSupported);
        const data = standardInquiry(this.product, undefined);
        const alloc = cdb.readUInt16BE(3);
        return { status: Status.Good, dataIn: alloc < data.length ? data.subarray(0, alloc) : data };
      }
      case Op.ReportLuns:
        return reportLuns(undefined as unknown as LogicalUnit, req, this) as ScsiResult;
      case Op.RequestSense: {
        const sense = buildSense((cdb[1] & 0x01) !== 0, SenseKey.IllegalRequest, Asc.LogicalUnitNotSupported);
        return { status: Status.Good, dataIn: cdb[4] < sense.length ? sense.subarray(0, cdb[4]) : sense };
      }
      default:
        throw new SenseError(SenseKey.IllegalRequest, Asc.LogicalUnitNotSupported);
    }
  }

  /** REQUEST SENSE (SPC-4 §6.29): the pending unit attention (cleared), else NO SENSE. */
  private requestSense(lu: LogicalUnit, req: ScsiRequest, itn: string): ScsiResult {
    const cdb = req.cdb;
    const desc = (cdb[1] & 0x01) !== 0;
    const ua = lu.ua.take(itn);
    const sense = ua !== undefined ? buildSense(desc, SenseKey.UnitAttention, ua) : buildSense(desc, SenseKey.NoSense, Asc.NoAdditionalSense);
    const alloc = cdb[4];
    return { status: Status.Good, dataIn: alloc < sense.length ? sense.subarray(0, alloc) : sense };
  }

  /** Any failure becomes CHECK CONDITION; the format follows D_SENSE of the LU. */
  private fail(lu: LogicalUnit | undefined, e: unknown, opcode?: number): ScsiResult {
    const dsense = lu?.mode.dsense ?? false;
    if (e instanceof TaskAbortedError) return TASK_ABORTED;
    if (e instanceof SenseError) {
      return { status: Status.CheckCondition, sense: buildSense(dsense, e.key, e.ascq, e.field, e.information) };
    }
    if (e instanceof VolumeError) {
      const isWrite = opcode !== undefined && isWriteOpcode(opcode);
      let key: number = SenseKey.MediumError;
      let ascq: number = isWrite ? Asc.WriteError : Asc.ReadError;
      if (e.code === VolumeErrorCode.ReadOnly) {
        key = SenseKey.DataProtect;
        ascq = Asc.WriteProtected;
      } else if (e.code === VolumeErrorCode.NoSpace) {
        key = SenseKey.DataProtect;
        ascq = 0x2707; // SPACE ALLOCATION FAILED WRITE PROTECT (SBC-3 §4.7.3.6)
      } else if (e.code === VolumeErrorCode.OutOfRange) {
        key = SenseKey.IllegalRequest;
        ascq = Asc.LbaOutOfRange;
      }
      this.logger?.error({ err: e, lun: lu?.lun, opcode }, 'volume error');
      return { status: Status.CheckCondition, sense: buildSense(dsense, key, ascq) };
    }
    this.logger?.error({ err: e, lun: lu?.lun, opcode }, 'command failed');
    const isWrite = opcode !== undefined && isWriteOpcode(opcode);
    return {
      status: Status.CheckCondition,
      sense: buildSense(dsense, isWrite ? SenseKey.MediumError : SenseKey.HardwareError, isWrite ? Asc.WriteError : Asc.InternalTargetFailure),
    };
  }

  taskManagement(fn: TmfFunction, lun: number, nexus: Nexus): TmfResponse {
    const itn = this.itn(nexus);
    switch (fn) {
      case TmfFunction.AbortTask:
      case TmfFunction.AbortTaskSet:
        // The iSCSI layer aborts the tasks; nothing at the SCSI level (TAS=0).
        return this.luns.has(lun) ? TmfResponse.FunctionComplete : TmfResponse.LunDoesNotExist;
      case TmfFunction.ClearTaskSet: {
        const lu = this.luns.get(lun);
        if (!lu) return TmfResponse.LunDoesNotExist;
        // SAM-5 §7.5: other nexuses whose tasks were cleared learn it by a unit attention.
        lu.ua.addAll(Asc.CommandsClearedByAnotherInitiator, itn);
        return TmfResponse.FunctionComplete;
      }
      case TmfFunction.ClearAca:
        return this.luns.has(lun) ? TmfResponse.FunctionComplete : TmfResponse.LunDoesNotExist;
      case TmfFunction.LogicalUnitReset: {
        const lu = this.luns.get(lun);
        if (!lu) return TmfResponse.LunDoesNotExist;
        this.resetLu(lu);
        return TmfResponse.FunctionComplete;
      }
      case TmfFunction.TargetWarmReset:
      case TmfFunction.TargetColdReset:
        for (const lu of this.luns.values()) this.resetLu(lu, fn === TmfFunction.TargetColdReset ? Asc.PowerOnResetOrBusDeviceReset : undefined);
        return TmfResponse.FunctionComplete;
      default:
        return TmfResponse.NotSupported;
    }
  }

  /**
   * SAM-5 §6.3.3 (LOGICAL UNIT RESET) / §6.3.5 (TARGET RESET): the SPC-2 reservation is
   * released, persistent reservations and mode parameters are kept, and every I_T nexus -
   * the issuer's too (libiscsi MultipathIO.Reset) - gets BUS DEVICE RESET FUNCTION OCCURRED.
   */
  private resetLu(lu: LogicalUnit, ascq: number = Asc.BusDeviceResetFunctionOccurred): void {
    lu.spc2.clear();
    this.attentionForAll(lu, ascq);
  }

  /** A unit attention for every I_T nexus with a session now (and every one that addressed the LU). */
  private attentionForAll(lu: LogicalUnit, ascq: number): void {
    for (const itn of this.sessions.keys()) lu.ua.register(itn);
    lu.ua.addAll(ascq);
  }

  /**
   * The volume under these LUNs grew (FileVolume.grow): READ CAPACITY reports the new size, and
   * every I_T nexus gets CAPACITY DATA HAS CHANGED on its next command (SPC-4 §5.14), so
   * initiators re-read it.
   */
  capacityChanged(): void {
    for (const lu of this.luns.values()) {
      const before = lu.blocks;
      if (!lu.refreshCapacity()) continue;
      this.attentionForAll(lu, Asc.CapacityDataHasChanged);
      this.logger?.info({ lun: lu.lun, blocks: lu.blocks, previousBlocks: before }, 'capacity changed: initiators are told (unit attention CAPACITY DATA HAS CHANGED)');
    }
  }

  nexusStarted(nexus: Nexus, reinstated: boolean): void {
    const itn = this.itn(nexus);
    this.sessions.set(itn, (this.sessions.get(itn) ?? 0) + 1);
    for (const lu of this.luns.values()) {
      lu.ua.register(itn);
      // A brand-new nexus starts clean: no POWER ON / stale conditions at login.
      if (!reinstated) lu.ua.clear(itn);
    }
  }

  nexusEnded(nexus: Nexus): void {
    const itn = this.itn(nexus);
    const n = (this.sessions.get(itn) ?? 1) - 1;
    if (n <= 0) this.sessions.delete(itn);
    else this.sessions.set(itn, n);
    // I_T nexus loss releases an SPC-2 reservation (SPC-2 §5.5.1); persistent ones stay.
    if (n <= 0) for (const lu of this.luns.values()) lu.spc2.nexusLost(itn);
  }

  stats(): ScsiStats {
    const errorsBySenseKey: Record<string, number> = {};
    this.senseKeyCounts.forEach((n, k) => {
      if (n > 0) errorsBySenseKey[SENSE_KEY_NAMES[k]] = n;
    });
    return {
      commands: Object.fromEntries(this.commandCounts),
      bytesRead: this.counters.bytesRead,
      bytesWritten: this.counters.bytesWritten,
      errorsBySenseKey,
      reservationConflicts: this.reservationConflicts,
      unitAttentions: this.unitAttentions,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Wait for PR OUT commands that are persisting; the volumes belong to the caller.
    await Promise.all([...this.luns.values()].map((lu) => lu.prQueue.catch(() => undefined)));
  }
}

class SenseConfigError extends Error {
  readonly code = 'SCSI_CONFIG_INVALID';
}

function senseKeyOf(sense: Buffer): number {
  const code = sense[0] & 0x7f;
  return (code === 0x72 || code === 0x73 ? sense[1] : sense[2]) & 0x0f;
}

function isWriteOpcode(op: number): boolean {
  switch (op) {
    case Op.Write6:
    case Op.Write10:
    case Op.Write12:
    case Op.Write16:
    case Op.WriteAndVerify10:
    case Op.WriteAndVerify12:
    case Op.WriteAndVerify16:
    case Op.WriteSame10:
    case Op.WriteSame16:
    case Op.Unmap:
    case Op.CompareAndWrite:
    case Op.OrWrite:
    case Op.SynchronizeCache10:
    case Op.SynchronizeCache16:
    case Op.ExtendedCopy:
      return true;
    default:
      return false;
  }
}

/** Build the SCSI target of one iSCSI target: its LUs over their volumes. */
export async function createScsiTarget(opts: ScsiTargetOptions): Promise<ScsiTargetHandle> {
  const t = new Target(opts);
  await t.open();
  return t;
}

export { GOOD };
