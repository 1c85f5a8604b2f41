/**
 * Full feature phase of one session (RFC 7143 §4, §11): the CmdSN window, SCSI tasks with
 * immediate, unsolicited and solicited (R2T) data-out, Data-In sequences bounded by
 * MaxBurstLength with status in the last PDU, residuals, NOP, task management, text
 * (SendTargets) and logout. One connection per session (MaxConnections=1). The session never
 * looks inside a CDB: it hands commands to the target's `ScsiTarget`.
 */
import { acquireBuffer, releaseBuffer } from '../common/buffer-pool';
import type { Logger } from '../common/logger';
import { INCORRECT_AMOUNT_OF_DATA, TaskAttribute, TmfFunction, TmfResponse, type Nexus, type ScsiResult } from '../scsi/port';
import {
  BHS_LENGTH, CMD_ATTR_MASK, CMD_READ, CMD_WRITE, FINAL_BIT, InitiatorOp, LogoutReason, LogoutResponseCode, RESERVED_TAG,
  RESP_OVERFLOW, RESP_UNDERFLOW, RejectReason, ScsiResponseCode, TARGET_LIMITS,
} from './constants';
import { IscsiError, IscsiErrorCode, PduRejected } from './errors';
import { negotiate, type SessionParams, type TargetOffer } from './negotiation';
import * as P from './pdu';
import type { SessionType } from './login';
import { TaskTable } from './task-table';
import type { TargetEntry } from './targets';
import { encodeText, parseText, type TextPairs } from './text';

/** What a session needs from its connection. */
export interface SessionLink {
  statSN: number;
  /** `onSent`: called once the socket has taken the bytes (the data buffer may be reused). */
  send(bhs: Buffer, data?: Buffer, onSent?: () => void): void;
  /** Close after queued output is written. */
  end(): void;
  /** Send a NOP-In that asks for an answer (RFC 7143 §11.19: its NOP-Out carries ExpStatSN). */
  solicitAck(): void;
  readonly localAddress: string;
  readonly localPort: number;
}

/** What a session needs from the server. */
export interface SessionHost {
  readonly logger: Logger;
  readonly offer: TargetOffer;
  readonly portalGroupTag: number;
  sessionsOf(targetName: string): readonly Session[];
  visibleTargets(initiatorName: string): readonly TargetEntry[];
  sessionEnded(s: Session): void;
  count(event: string, n?: number): void;
  /**
   * How long a task set function waits for the R2Ts of the tasks it aborts to be answered (RFC
   * 7143 §11.6.2 b), and then for the statuses sent before it to be acknowledged (§11.6.2 d).
   */
  readonly tmfTransferWaitMs: number;
}

interface R2tState {
  offset: number;
  length: number;
  nextDataSN: number;
}

interface Task {
  itt: number;
  immediate: boolean;
  lun: number;
  lunField: Buffer;
  cdb: Buffer;
  edtl: number;
  read: boolean;
  write: boolean;
  attr: TaskAttribute;
  /** Data-out buffer (the immediate data itself when it is all of it). */
  data?: Buffer;
  /**
   * Data-out bytes received. Data PDUs are accepted only in order (DataPDUInOrder and
   * DataSequenceInOrder are always Yes: negotiation.ts), each at exactly this offset, so the
   * bytes received are always [0, received) of `data`, each written once.
   */
  received: number;
  /** Unsolicited Data-Out still allowed (InitialR2T=No, before the F bit). */
  unsolicitedOpen: boolean;
  unsolicitedLimit: number;
  unsolicitedDataSN: number;
  nextR2tOffset: number;
  r2tSN: number;
  /** Outstanding R2Ts by TTT; made by the first R2T (most writes carry their data immediately). */
  r2ts?: Map<number, R2tState>;
  executing: boolean;
  aborted: boolean;
  done?: Promise<void>;
  /**
   * Set when ABORT TASK SET or CLEAR TASK SET aborted the task while R2Ts were outstanding (RFC
   * 7143 §11.6.2): it stays in the table, its data buffer gone, until the initiator has answered
   * each of them (`drainDataOut`: checked as live data, then dropped). No R2T more, no response.
   */
  drain?: { done: Promise<void>; resolve: () => void };
}

/**
 * An aborted task's outstanding R2T the initiator may still answer: an aborted task whose R2T
 * nobody waits for (ABORT TASK, the resets, PREEMPT AND ABORT, a task set function that gave
 * up waiting). Data-Out for it is checked and dropped; were it taken as a stranger's, a
 * command reusing the ITT after the TMF response would see an unknown TTT and the connection drop.
 */
interface RetiredR2t {
  itt: number;
  /** The next offset expected, and the R2T's end. */
  next: number;
  end: number;
  nextDataSN: number;
}

/** Retired R2Ts kept at most (the oldest are forgotten first). */
const RETIRED_R2T_LIMIT = 1024;

/** A task set function's wait for one aborted task's outstanding R2Ts to be answered. */
export interface TransferWait {
  done: Promise<void>;
  /** Stop waiting: the task ends, its R2Ts retired. */
  giveUp(): void;
}

const LUN_INVALID = 0xffff;

/**
 * In `held`, in place of a command: its CmdSN was taken by ABORT TASK (RFC 7143 §11.5.1: a
 * task not received yet whose RefCmdSN is in the window is considered received, and aborted)
 * or the held command was aborted by a task set function. The CmdSN window passes it without
 * executing anything, and the command itself, should it still come, is discarded.
 */
const ABORTED_CMDSN: P.Pdu = Object.freeze({ bhs: Buffer.alloc(0), data: Buffer.alloc(0) });

/**
 * A task set function (ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET WARM RESET)
 * received as immediate ahead of a CmdSN gap (RFC 7143 §11.5.1, §11.6.2): it covers every
 * command with a CmdSN below its own, received yet or not, and is answered only once all of those
 * have been received, when ExpCmdSN reaches `cmdSN`. Until then, a SCSI command below `cmdSN`
 * for a logical unit it `covers` is taken in (its CmdSN counts) and dropped: not executed, not answered.
 */
interface TaskSetFence {
  cmdSN: number;
  covers: (lun: number) => boolean;
  function: string;
  reached: () => void;
  /** Resolves when ExpCmdSN reaches `cmdSN` (or the session ends). */
  passed: Promise<void>;
  /** ExpCmdSN reached it: it holds the barrier until endFence. */
  released: boolean;
}

export class Session {
  readonly nexus?: Nexus;
  expCmdSN: number;
  private held = new Map<number, P.Pdu>();
  /**
   * Unsolicited Data-Out for SCSI commands held behind a CmdSN gap, by ITT: the initiator sends
   * it right after its command (InitialR2T=No), before the gap fills. Kept whole, in arrival
   * order, and handed to `dataOut` once the command is dispatched (checked there as if live);
   * dropped with the command when it is aborted.
   */
  private heldDataOut = new Map<number, { cmdSN: number; edtl: number; bytes: number; pdus: P.Pdu[] }>();
  private fences: TaskSetFence[] = [];
  /**
   * Deferred task set functions released (ExpCmdSN reached them) whose action has not run yet:
   * while any is, no command at or after their CmdSN is dispatched (they were sent after the
   * function, which must not cover them: a reset would undo what they did).
   */
  private barrier = 0;
  private tasks = new TaskTable<Task>(TARGET_LIMITS.queueDepth * 2);
  private windowed = 0;
  private nextTtt = 1;
  private retiredR2ts = new Map<number, RetiredR2t>();
  private bufferedDataOut = 0;
  private loggingOut = false;
  private textContinuation?: { itt: number; ttt: number; rest: Buffer };
  private textPending: Buffer[] = [];
  /**
   * The initiator's ExpStatSN (every StatSN below it acknowledged), from the PDUs it sends; a
   * value past the last StatSN sent is not taken. Starts at the link's next StatSN: the login's
   * answers need no acknowledgement here.
   */
  private statAcked: number;
  /** Waits for ExpStatSN to pass a StatSN (task set functions, RFC 7143 §11.6.2 d). */
  private ackWaiters: { statSN: number; resolve: () => void }[] = [];
  closed = false;
  readonly startedAt = performance.now();
  commands = 0;

  constructor(
    readonly tsih: number,
    readonly type: SessionType,
    readonly initiatorName: string,
    readonly isid: Buffer,
    readonly target: TargetEntry | undefined,
    readonly params: SessionParams,
    initialCmdSN: number,
    private readonly link: SessionLink,
    private readonly host: SessionHost,
    readonly logger: Logger,
  ) {
    this.expCmdSN = initialCmdSN >>> 0;
    this.statAcked = link.statSN;
    if (type === 'Normal' && target) {
      const isidHex = isid.toString('hex');
      this.nexus = {
        initiatorName,
        isid,
        targetName: target.name,
        tpgt: host.portalGroupTag,
        initiatorPortName: `${initiatorName},i,0x${isidHex}`,
        relativeTargetPortId: 1,
        targetPortGroup: 1,
        sessionId: `${tsih}`,
      };
    }
  }

  get key(): string {
    return `${this.target?.name ?? ''}|${this.initiatorName}|${this.isid.toString('hex')}`;
  }

  get maxCmdSN(): number {
    return (this.expCmdSN + TARGET_LIMITS.queueDepth - 1 - this.windowed) >>> 0;
  }

  get outstanding(): number {
    return this.tasks.size;
  }

  seq(withStatus: boolean): P.Sequencing {
    const statSN = this.link.statSN;
    if (withStatus) this.link.statSN = (statSN + 1) >>> 0;
    return { statSN, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN };
  }

  /** One full-feature-phase PDU from the connection. Throws IscsiError when the connection must drop. */
  receive(pdu: P.Pdu): void {
    const op = P.opcode(pdu.bhs);
    // Every PDU an initiator sends in full feature phase carries ExpStatSN at bytes 28-31.
    const acked = pdu.bhs.readUInt32BE(28);
    if (acked !== this.statAcked) this.noteStatAcked(acked);
    if (op === InitiatorOp.DataOut) return this.dataOut(pdu);
    if (op === InitiatorOp.SnackRequest) throw new PduRejected(RejectReason.SnackReject, 'SNACK is not supported at ErrorRecoveryLevel 0');
    if (op === InitiatorOp.LoginRequest) throw new PduRejected(RejectReason.ProtocolError, 'Login Request in full feature phase');
    if (op !== InitiatorOp.NopOut && op !== InitiatorOp.ScsiCommand && op !== InitiatorOp.TaskManagement && op !== InitiatorOp.TextRequest && op !== InitiatorOp.LogoutRequest) {
      throw new PduRejected(RejectReason.CommandNotSupported, `opcode 0x${op.toString(16)} is not supported`);
    }
    // A NOP-Out answering our ping carries ITT 0xffffffff and does not take a CmdSN.
    if (P.isImmediate(pdu.bhs) || (op === InitiatorOp.NopOut && P.itt(pdu.bhs) === RESERVED_TAG)) return this.dispatch(pdu, true);
    const sn = P.cmdSN(pdu.bhs);
    if (sn === this.expCmdSN && !this.barrier) {
      this.advance(pdu);
      return;
    }
    const held = this.held.get(sn);
    if (held === ABORTED_CMDSN) {
      // Aborted before it arrived (ABORT TASK naming its CmdSN in a gap): discarded, never executed.
      this.host.count('cmdsn_aborted_discarded');
      this.logger.info({ cmdSN: sn, itt: P.itt(pdu.bhs) }, 'command aborted before it arrived discarded');
      return;
    }
    if (!held && P.snLessOrEqual(this.expCmdSN, sn) && P.snLessOrEqual(sn, this.maxCmdSN)) {
      // Ahead of a gap (or at ExpCmdSN behind a released task set function's barrier): hold until
      // the missing commands arrive or the function has acted. (The reader hands over each
      // PDU's buffers: a new BHS every PDU, the data segment from the pool, now the session's.)
      this.held.set(sn, pdu);
      if (op === InitiatorOp.ScsiCommand && (pdu.bhs[1] & CMD_WRITE) !== 0 && (pdu.bhs[1] & FINAL_BIT) === 0) {
        const itt = P.itt(pdu.bhs);
        if (!this.tasks.has(itt) && !this.heldDataOut.has(itt)) this.heldDataOut.set(itt, { cmdSN: sn, edtl: P.expectedDataLength(pdu.bhs), bytes: 0, pdus: [] });
      }
      return;
    }
    // Outside the window: silently ignored (RFC 7143 §4.2.2.1).
    this.host.count('cmdsn_outside_window');
    this.logger.warn({ cmdSN: sn, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN, opcode: op }, 'command outside the CmdSN window ignored');
  }

  /** `pdu` carries ExpCmdSN: dispatch it, then whatever it unblocks. */
  private advance(pdu: P.Pdu): void {
    this.expCmdSN = (this.expCmdSN + 1) >>> 0;
    this.dispatchInOrder(pdu);
    this.dispatchHeld();
  }

  /**
   * Dispatch the held commands from ExpCmdSN on for as long as the next one is here, passing
   * over CmdSNs taken by aborts (each counts as received: ExpCmdSN moves past it).
   */
  private dispatchHeld(): void {
    for (;;) {
      // A deferred task set function ExpCmdSN has reached acts before anything after it.
      if (this.fences.length) this.passFences();
      if (this.barrier) return;
      const next = this.held.get(this.expCmdSN);
      if (!next) return;
      const sn = this.expCmdSN;
      this.held.delete(sn);
      this.expCmdSN = (sn + 1) >>> 0;
      if (next === ABORTED_CMDSN) {
        if (this.heldDataOut.size) this.dropHeldDataOut(sn);
        continue;
      }
      this.dispatchInOrder(next);
      if (this.heldDataOut.size && P.opcode(next.bhs) === InitiatorOp.ScsiCommand) this.replayHeldDataOut(P.itt(next.bhs), sn);
    }
  }

  /** The Data-Out that came while the command (`itt`, `sn`) was held, to `dataOut` in arrival order. */
  private replayHeldDataOut(itt: number, sn: number): void {
    const h = this.heldDataOut.get(itt);
    if (!h || h.cmdSN !== sn) return;
    this.heldDataOut.delete(itt);
    this.bufferedDataOut -= h.bytes;
    // Not a task (rejected, or dropped by a deferred task set function): the data goes with it.
    if (!this.tasks.has(itt)) for (const pdu of h.pdus) releaseBuffer(pdu.data);
    else for (const pdu of h.pdus) this.dataOut(pdu);
  }

  /** The held command at `sn` was aborted: its buffered Data-Out goes with it. */
  private dropHeldDataOut(sn: number): void {
    for (const [itt, h] of this.heldDataOut) {
      if (h.cmdSN !== sn) continue;
      this.heldDataOut.delete(itt);
      this.bufferedDataOut -= h.bytes;
      for (const pdu of h.pdus) releaseBuffer(pdu.data);
      if (h.pdus.length) this.logger.info({ itt, cmdSN: sn, pdus: h.pdus.length, bytes: h.bytes }, 'Data-Out of an aborted held command discarded');
    }
  }

  /**
   * Dispatch a command in CmdSN order. One rejected (a PduRejected: a bad command, not a broken
   * connection) is answered with a Reject here and has used its CmdSN (RFC 7143 §4.2.2.1):
   * thrown on to the connection, it would end `dispatchHeld` and strand every command held after it,
   * ExpCmdSN stuck below them for good.
   */
  private dispatchInOrder(pdu: P.Pdu): void {
    if (this.fences.length && this.abortedByTaskSet(pdu)) return;
    try {
      this.dispatch(pdu, false);
    } catch (e) {
      if (!(e instanceof PduRejected) || e.fatal) throw e;
      this.host.count('rejects');
      this.logger.warn({ reason: e.reason, err: e.message, opcode: P.opcode(pdu.bhs) }, 'PDU rejected');
      this.sendReject(e.reason, pdu.bhs);
    }
  }

  private sendReject(reason: RejectReason, bhs: Buffer): void {
    const copy = Buffer.from(bhs.subarray(0, BHS_LENGTH));
    this.link.send(P.reject(reason, this.seq(true), copy.length), copy);
  }

  private dispatch(pdu: P.Pdu, immediate: boolean): void {
    const bhs = pdu.bhs;
    switch (P.opcode(bhs)) {
      case InitiatorOp.NopOut:
        return this.nopOut(pdu);
      case InitiatorOp.ScsiCommand:
        return this.scsiCommand(pdu, immediate);
      case InitiatorOp.TaskManagement:
        if (this.type === 'Discovery') throw new PduRejected(RejectReason.ProtocolError, 'task management in a discovery session');
        this.taskManagement(pdu, immediate).catch((e: unknown) => this.logger.error({ err: e }, 'task management failed'));
        // An immediate ABORT TASK of a command not received yet may have taken ExpCmdSN itself
        // (synchronously, before taskManagement's first await): pass it, and dispatch what
        // waited behind it. (One in CmdSN order only names commands before it: dispatched.)
        if (immediate) this.dispatchHeld();
        return;
      case InitiatorOp.TextRequest:
        return this.text(pdu);
      case InitiatorOp.LogoutRequest:
        this.logout(pdu).catch((e: unknown) => this.logger.error({ err: e }, 'logout failed'));
        return;
    }
  }

  // ---- NOP ----------------------------------------------------------------------------------

  private nopOut(pdu: P.Pdu): void {
    const itt = P.itt(pdu.bhs);
    if (itt === RESERVED_TAG) return; // a ping answer; the connection already noted the traffic
    const max = this.params.initiatorMaxRecvDataSegmentLength;
    const data = pdu.data.length > max ? pdu.data.subarray(0, max) : pdu.data;
    this.link.send(P.nopIn(itt, RESERVED_TAG, pdu.bhs.subarray(8, 16), this.seq(true), data.length), data);
  }

  // ---- SCSI commands ----------------------------------------------------------------------

  private scsiCommand(pdu: P.Pdu, immediate: boolean): void {
    const bhs = pdu.bhs;
    if (this.type === 'Discovery' || !this.target || !this.nexus) throw new PduRejected(RejectReason.ProtocolError, 'SCSI command in a discovery session');
    if (this.loggingOut) throw new PduRejected(RejectReason.WaitingForLogout, 'SCSI command while logging out');
    const itt = P.itt(bhs);
    if (this.tasks.has(itt)) throw new PduRejected(RejectReason.TaskInProgress, `ITT 0x${itt.toString(16)} is already in use`);
    if (this.tasks.size >= this.tasks.capacity) throw new IscsiError(IscsiErrorCode.Protocol, `more than ${this.tasks.capacity} tasks outstanding`);
    const flags = bhs[1];
    const read = (flags & CMD_READ) !== 0;
    const write = (flags & CMD_WRITE) !== 0;
    const edtl = P.expectedDataLength(bhs);
    let cdb = bhs.subarray(32, 48);
    if (pdu.ahs) cdb = extendedCdb(cdb, pdu.ahs);
    const lun = P.decodeLun(bhs);
    const task: Task = {
      itt, immediate, lun: lun < 0 ? LUN_INVALID : lun, lunField: bhs.subarray(8, 16), cdb, edtl, read, write,
      attr: (flags & CMD_ATTR_MASK) as TaskAttribute,
      received: 0, unsolicitedOpen: false, unsolicitedLimit: 0, unsolicitedDataSN: 0, nextR2tOffset: 0, r2tSN: 0,
      executing: false, aborted: false,
    };
    const imm = pdu.data;
    if (!write || edtl === 0) {
      if (imm.length && !write) throw new PduRejected(RejectReason.ProtocolError, 'immediate data on a command without the W bit');
      this.track(task);
      return this.execute(task);
    }
    if (imm.length && !this.params.immediateData) throw new PduRejected(RejectReason.ProtocolError, 'immediate data when ImmediateData=No');
    if (imm.length > this.params.firstBurstLength) throw new PduRejected(RejectReason.ProtocolError, `immediate data (${imm.length}) exceeds FirstBurstLength`);
    if (edtl > TARGET_LIMITS.maxDataOutBytes) {
      this.track(task);
      this.logger.warn({ itt, edtl }, 'data-out transfer too large');
      return this.respond(task, { status: 0, response: ScsiResponseCode.TargetFailure });
    }
    this.track(task);
    if (imm.length >= edtl) {
      task.data = imm.length === edtl ? imm : imm.subarray(0, edtl);
      task.received = edtl;
      return this.execute(task);
    }
    this.bufferedDataOut += edtl;
    if (this.bufferedDataOut > TARGET_LIMITS.maxBufferedDataOutBytes) throw new IscsiError(IscsiErrorCode.Protocol, 'too much data-out buffered');
    task.data = acquireBuffer(edtl);
    if (imm.length) imm.copy(task.data, 0);
    releaseBuffer(imm);
    task.received = imm.length;
    task.nextR2tOffset = imm.length;
    const final = (flags & FINAL_BIT) !== 0;
    if (!this.params.initialR2T && !final) {
      task.unsolicitedOpen = true;
      task.unsolicitedLimit = Math.min(this.params.firstBurstLength, edtl);
      return;
    }
    this.issueR2ts(task);
  }

  private track(task: Task): void {
    this.tasks.set(task.itt, task);
    if (!task.immediate) this.windowed++;
    this.commands++;
  }

  /**
   * One Data-Out PDU. DataPDUInOrder and DataSequenceInOrder are Yes (the target never agrees
   * to No), so every PDU must start exactly where the data received so far ends: unsolicited
   * data after the immediate data, each R2T's sequence in the order the R2Ts went out (RFC 7143
   * §11.8, §13.19, §13.20). A PDU elsewhere (a hole, an overlap, a repeat) breaks the
   * connection, as one outside its R2T does (Linux LIO drops it too): the buffer comes from
   * the pool, and bytes never received must never reach the medium. A sequence the F bit ends
   * short of what was asked (an R2T's Desired Data Transfer Length; unsolicited data short of
   * FirstBurstLength or the transfer length, §11.3.4) ends the command with INCORRECT AMOUNT
   * OF DATA (§11.4.7.2). Only integer comparisons: this is the write path.
   */
  private dataOut(pdu: P.Pdu): void {
    const bhs = pdu.bhs;
    const task = this.tasks.get(P.itt(bhs));
    if (!task && this.heldDataOut.size) {
      const h = this.heldDataOut.get(P.itt(bhs));
      if (h) return this.holdDataOut(h, pdu);
    }
    if (!task || task.executing || !task.data) {
      if (task?.drain) return this.drainDataOut(task, pdu);
      if (this.retiredR2ts.size && this.retiredDataOut(pdu)) return;
      // The task was aborted or already has all its data: the PDU is discarded (RFC 7143 §11.7).
      releaseBuffer(pdu.data);
      this.host.count('dataout_discarded');
      return;
    }
    const ttt = P.ttt(bhs);
    const offset = P.bufferOffset(bhs);
    const len = pdu.data.length;
    const end = offset + len;
    if (end > task.edtl) throw new IscsiError(IscsiErrorCode.Protocol, `Data-Out beyond the expected length (${offset}+${len} > ${task.edtl})`);
    const final = (bhs[1] & FINAL_BIT) !== 0;
    const dsn = P.dataSN(bhs);
    if (ttt === RESERVED_TAG) {
      if (!task.unsolicitedOpen || end > task.unsolicitedLimit) throw new IscsiError(IscsiErrorCode.Protocol, 'unsolicited Data-Out not allowed here');
      if (dsn !== task.unsolicitedDataSN) return this.failDataOut(task, pdu, `Data-Out DataSN ${dsn}, expected ${task.unsolicitedDataSN}`);
      if (offset !== task.received) throw outOfOrder(task, offset);
      if (final && end !== task.unsolicitedLimit) return this.incorrectAmount(task, `unsolicited data ends at ${end}, expected ${task.unsolicitedLimit}`);
      task.unsolicitedDataSN++;
      pdu.data.copy(task.data, offset);
      releaseBuffer(pdu.data);
      task.received = end;
      task.nextR2tOffset = end;
      if (final || end === task.unsolicitedLimit) {
        task.unsolicitedOpen = false;
        this.issueR2ts(task);
      }
      return;
    }
    const r = task.r2ts?.get(ttt);
    if (!r) {
      if (this.retiredR2ts.size && this.retiredDataOut(pdu)) return;
      throw unknownTtt(ttt);
    }
    const r2tEnd = r.offset + r.length;
    if (offset < r.offset || end > r2tEnd) throw new IscsiError(IscsiErrorCode.Protocol, 'Data-Out outside its R2T');
    if (dsn !== r.nextDataSN) return this.failDataOut(task, pdu, `Data-Out DataSN ${dsn}, expected ${r.nextDataSN}`);
    if (offset !== task.received) throw outOfOrder(task, offset);
    if (final && end !== r2tEnd) return this.incorrectAmount(task, `R2T for ${r.offset}..${r2tEnd} answered up to ${end} only`);
    r.nextDataSN++;
    pdu.data.copy(task.data, offset);
    releaseBuffer(pdu.data);
    task.received = end;
    if (end === r2tEnd) {
      task.r2ts!.delete(ttt);
      this.issueR2ts(task);
    }
  }

  /**
   * Data-Out answering an R2T of a task aborted by ABORT TASK SET or CLEAR TASK SET (RFC 7143
   * §11.6.2: the initiator goes on answering them, the target waits). Checked as for a live task
   * (its R2T, offset, DataSN: a PDU that breaks the sequence still breaks the connection), then
   * dropped. The R2T is answered with the last PDU of its sequence (the end of its range, or the
   * F bit); once all are, the task ends, unanswered, and the function waiting for it goes on.
   */
  private drainDataOut(task: Task, pdu: P.Pdu): void {
    const bhs = pdu.bhs;
    const ttt = P.ttt(bhs);
    const r = task.r2ts?.get(ttt);
    if (!r) {
      if (ttt !== RESERVED_TAG && this.retiredR2ts.size && this.retiredDataOut(pdu)) return;
      if (ttt === RESERVED_TAG) throw new IscsiError(IscsiErrorCode.Protocol, 'unsolicited Data-Out not allowed here');
      throw unknownTtt(ttt);
    }
    const offset = P.bufferOffset(bhs);
    const end = offset + pdu.data.length;
    const r2tEnd = r.offset + r.length;
    if (offset < r.offset || end > r2tEnd) throw new IscsiError(IscsiErrorCode.Protocol, 'Data-Out outside its R2T');
    const dsn = P.dataSN(bhs);
    if (dsn !== r.nextDataSN) {
      // As for a live task: rejected, and the task (aborted already) ends.
      this.host.count('rejects');
      this.logger.warn({ itt: task.itt, err: `Data-Out DataSN ${dsn}, expected ${r.nextDataSN}` }, 'Data-Out of an aborted task rejected');
      this.sendReject(RejectReason.ProtocolError, bhs);
      releaseBuffer(pdu.data);
      return this.endDrain(task, false);
    }
    if (offset !== task.received) throw outOfOrder(task, offset);
    releaseBuffer(pdu.data);
    this.host.count('dataout_drained');
    r.nextDataSN++;
    task.received = end;
    if ((bhs[1] & FINAL_BIT) === 0 && end !== r2tEnd) return;
    // The sequence is over (short of the R2T or not: nothing is written either way).
    task.r2ts!.delete(ttt);
    task.received = r2tEnd;
    if (task.r2ts!.size === 0) this.endDrain(task, false);
  }

  /**
   * Data-Out for a retired R2T (an aborted task's, not waited for): checked against what is
   * left of its sequence and dropped. False when the TTT is not a retired one of this ITT.
   */
  private retiredDataOut(pdu: P.Pdu): boolean {
    const bhs = pdu.bhs;
    const ttt = P.ttt(bhs);
    const r = this.retiredR2ts.get(ttt);
    if (!r || r.itt !== P.itt(bhs)) return false;
    const offset = P.bufferOffset(bhs);
    const end = offset + pdu.data.length;
    if (offset !== r.next || end > r.end) {
      throw new IscsiError(IscsiErrorCode.Protocol, `Data-Out at ${offset}+${pdu.data.length} for the retired TTT 0x${ttt.toString(16)}, expected ${r.next} up to ${r.end}`);
    }
    releaseBuffer(pdu.data);
    const dsn = P.dataSN(bhs);
    if (dsn !== r.nextDataSN) {
      this.host.count('rejects');
      this.logger.warn({ itt: r.itt, ttt, err: `Data-Out DataSN ${dsn}, expected ${r.nextDataSN}` }, 'Data-Out for a retired R2T rejected');
      this.sendReject(RejectReason.ProtocolError, bhs);
      this.retiredR2ts.delete(ttt);
      return true;
    }
    this.host.count('dataout_retired_r2t');
    r.next = end;
    r.nextDataSN++;
    if ((bhs[1] & FINAL_BIT) !== 0 || end === r.end) this.retiredR2ts.delete(ttt);
    return true;
  }

  /** An aborted task's outstanding R2Ts, answered or not: Data-Out for them is dropped from now on (retiredDataOut). */
  private retireR2ts(task: Task): void {
    if (!task.r2ts?.size) return;
    for (const [ttt, r] of task.r2ts) {
      const end = r.offset + r.length;
      const next = task.received > r.offset && task.received < end ? task.received : r.offset;
      if (this.retiredR2ts.size >= RETIRED_R2T_LIMIT) this.retiredR2ts.delete(this.retiredR2ts.keys().next().value!);
      this.retiredR2ts.set(ttt, { itt: task.itt, next, end, nextDataSN: r.nextDataSN });
    }
    this.host.count('r2ts_retired', task.r2ts.size);
    task.r2ts.clear();
  }

  /**
   * An aborted task waiting for its R2Ts to be answered (RFC 7143 §11.6.2 b): its data buffer
   * goes back now (nothing of it will be written), the Data-Out still to come is only checked.
   */
  private startDrain(task: Task): TransferWait {
    if (!task.drain) {
      this.bufferedDataOut -= task.edtl;
      if (task.data) releaseBuffer(task.data);
      task.data = undefined;
      let resolve!: () => void;
      const done = new Promise<void>((r) => { resolve = r; });
      task.drain = { done, resolve };
      this.host.count('tasks_drained');
      this.logger.info({ itt: task.itt, outstandingR2ts: task.r2ts?.size }, 'aborted task waits for the Data-Out answering its R2Ts');
    }
    return { done: task.drain.done, giveUp: () => this.endDrain(task, true) };
  }

  /** The draining task ends (no response: it was aborted); `retire`: its R2Ts are not all answered. */
  private endDrain(task: Task, retire: boolean): void {
    if (this.tasks.get(task.itt) !== task) return;
    if (retire && !this.closed) this.retireR2ts(task);
    this.finish(task);
    task.drain?.resolve();
  }

  /**
   * Unsolicited Data-Out for a command held behind a CmdSN gap: kept until the command is
   * dispatched. Only what the command can take is kept (its expected length, and the session's
   * bound on buffered Data-Out); the rest breaks the connection, as it would once dispatched.
   */
  private holdDataOut(h: { edtl: number; bytes: number; pdus: P.Pdu[] }, pdu: P.Pdu): void {
    const len = pdu.data.length;
    if (P.ttt(pdu.bhs) !== RESERVED_TAG) throw new IscsiError(IscsiErrorCode.Protocol, 'solicited Data-Out for a command not dispatched yet (no R2T was sent)');
    if (h.bytes + len > h.edtl) throw new IscsiError(IscsiErrorCode.Protocol, `Data-Out beyond the expected length (${h.bytes + len} > ${h.edtl}) for a held command`);
    this.bufferedDataOut += len;
    if (this.bufferedDataOut > TARGET_LIMITS.maxBufferedDataOutBytes) throw new IscsiError(IscsiErrorCode.Protocol, 'too much data-out buffered');
    h.bytes += len;
    h.pdus.push(pdu);
    this.host.count('dataout_held');
  }

  /** Data-Out that ended short of what was asked: CHECK CONDITION, the command is not executed; the session goes on. */
  private incorrectAmount(task: Task, why: string): void {
    this.host.count('dataout_incorrect_amount');
    this.logger.warn({ itt: task.itt, err: why }, 'Data-Out short of what was asked, command failed');
    this.respond(task, { ...INCORRECT_AMOUNT_OF_DATA, response: ScsiResponseCode.CommandCompleted });
  }

  /**
   * A Data-Out that does not fit its sequence (wrong DataSN): the PDU is rejected and the
   * command ends with a target failure; the session goes on (RFC 7143 §7.1.1, ERL 0 within-command errors).
   */
  private failDataOut(task: Task, pdu: P.Pdu, why: string): void {
    this.host.count('rejects');
    this.logger.warn({ itt: task.itt, err: why }, 'Data-Out rejected, command failed');
    this.sendReject(RejectReason.ProtocolError, pdu.bhs);
    this.respond(task, { status: 0, response: ScsiResponseCode.TargetFailure });
  }

  /** Solicit the rest of the data, MaxOutstandingR2T at a time; execute once everything is in. */
  private issueR2ts(task: Task): void {
    const r2ts = (task.r2ts ??= new Map());
    while (r2ts.size < this.params.maxOutstandingR2T && task.nextR2tOffset < task.edtl) {
      const length = Math.min(this.params.maxBurstLength, task.edtl - task.nextR2tOffset);
      let ttt = this.nextTtt++;
      if (this.nextTtt >= RESERVED_TAG) this.nextTtt = 1;
      if (ttt === RESERVED_TAG) ttt = this.nextTtt++;
      r2ts.set(ttt, { offset: task.nextR2tOffset, length, nextDataSN: 0 });
      this.link.send(P.r2t({ itt: task.itt, ttt, lunField: task.lunField, r2tSN: task.r2tSN++, bufferOffset: task.nextR2tOffset, desiredLength: length }, this.seq(false)));
      task.nextR2tOffset += length;
    }
    if (r2ts.size === 0 && !task.unsolicitedOpen && task.nextR2tOffset >= task.edtl) {
      if (task.received !== task.edtl) {
        // Cannot happen while dataOut keeps the data in order; if it ever did, the buffer
        // (pooled: someone else's old bytes) must not reach the medium.
        this.logger.error({ itt: task.itt, received: task.received, edtl: task.edtl }, 'data-out incomplete at execution, command failed');
        return this.respond(task, { status: 0, response: ScsiResponseCode.TargetFailure });
      }
      this.bufferedDataOut -= task.edtl;
      this.execute(task);
    }
  }

  private execute(task: Task): void {
    task.executing = true;
    const nexus = this.nexus!;
    const scsi = this.target!.scsi;
    task.done = scsi
      .execute({
        nexus, lun: task.lun, cdb: task.cdb, taskTag: task.itt, taskAttribute: task.attr,
        expectedDataLength: task.edtl, readFlag: task.read, writeFlag: task.write, dataOut: task.write ? task.data : undefined,
      })
      .then(
        (r) => {
          // The SCSI layer is done with the data-out: the buffer goes back to the pool.
          if (r.dataOutDone && task.data) releaseBuffer(task.data);
          this.complete(task, r);
        },
        (e: unknown) => {
          this.logger.error({ err: e, itt: task.itt }, 'SCSI layer rejected a command');
          this.respond(task, { status: 0, response: ScsiResponseCode.TargetFailure });
        },
      );
  }

  private complete(task: Task, r: ScsiResult): void {
    const edtl = task.edtl;
    let produced: number;
    if (r.dataIn) produced = r.dataIn.length;
    else if (r.dataOutLength !== undefined) produced = r.dataOutLength;
    else produced = task.write ? edtl : 0;
    let residualFlags = 0;
    let residual = 0;
    if (produced < edtl) {
      residualFlags = RESP_UNDERFLOW;
      residual = edtl - produced;
    } else if (produced > edtl) {
      residualFlags = RESP_OVERFLOW;
      residual = produced - edtl;
    }
    const dataIn = r.dataIn && task.read && edtl > 0 ? (r.dataIn.length > edtl ? r.dataIn.subarray(0, edtl) : r.dataIn) : undefined;
    this.respond(task, { status: r.status, sense: r.sense, dataIn, residualFlags, residual, response: ScsiResponseCode.CommandCompleted });
  }

  private respond(task: Task, r: { status: number; response: number; sense?: Buffer; dataIn?: Buffer; residualFlags?: number; residual?: number }): void {
    this.finish(task);
    if (task.aborted || this.closed) return;
    const residualFlags = r.response === ScsiResponseCode.CommandCompleted ? (r.residualFlags ?? 0) : 0;
    const residual = residualFlags ? (r.residual ?? 0) : 0;
    let dataSN = 0;
    const statusInData = !!r.dataIn && r.dataIn.length > 0 && r.status === 0 && !r.sense && r.response === ScsiResponseCode.CommandCompleted;
    if (r.dataIn && r.dataIn.length) {
      const data = r.dataIn;
      const len = data.length;
      const mrdsl = this.params.initiatorMaxRecvDataSegmentLength;
      const burst = this.params.maxBurstLength;
      let off = 0;
      while (off < len) {
        const burstEnd = Math.min(len, (Math.floor(off / burst) + 1) * burst);
        const n = Math.min(mrdsl, burstEnd - off);
        const last = off + n === len;
        const withStatus = last && statusInData;
        const hdr = P.dataIn(
          { itt: task.itt, final: off + n === burstEnd, withStatus, status: r.status, residualFlags, residual, lunField: task.lunField, dataSN: dataSN++, bufferOffset: off },
          this.seq(withStatus),
          n,
        );
        off += n;
        this.link.send(hdr, data.subarray(off - n, off), off === len ? () => releaseBuffer(data) : undefined);
      }
      if (statusInData) return;
    }
    let senseData: Buffer | undefined;
    if (r.sense && r.sense.length) {
      senseData = Buffer.allocUnsafe(2 + r.sense.length);
      senseData.writeUInt16BE(r.sense.length, 0);
      r.sense.copy(senseData, 2);
    }
    const expDataSN = task.read ? dataSN : task.r2tSN;
    this.link.send(P.scsiResponse({ itt: task.itt, status: r.status, response: r.response, residualFlags, residual, expDataSN }, this.seq(true), senseData?.length ?? 0), senseData);
  }

  private finish(task: Task): void {
    if (this.tasks.get(task.itt) === task) {
      this.tasks.delete(task.itt);
      if (!task.immediate) this.windowed--;
      if (!task.executing && task.data && task.received < task.edtl) this.bufferedDataOut -= task.edtl;
    }
  }

  // ---- Task management ----------------------------------------------------------------------

  private noteStatAcked(acked: number): void {
    // Only forward, and never past what was sent (a confused initiator acknowledges nothing unsent).
    if (!P.snLessThan(this.statAcked, acked) || P.snLessThan(this.link.statSN, acked)) return;
    this.statAcked = acked;
    if (this.ackWaiters.length) {
      this.ackWaiters = this.ackWaiters.filter((w) => {
        if (P.snLessThan(w.statSN, acked)) w.resolve();
        return !P.snLessThan(w.statSN, acked);
      });
    }
  }

  /**
   * Resolves once the initiator has acknowledged every status this session sent so far (RFC
   * 7143 §11.6.2 d: the target notes the last StatSN sent on each connection sharing the task
   * set, and waits for its acknowledgement, asking for one with a NOP-In). At once when it has
   * (the common case: the function's own PDU acknowledged it), or the session ends.
   */
  statusesAcknowledged(): Promise<void> {
    const last = (this.link.statSN - 1) >>> 0;
    if (this.closed || P.snLessThan(last, this.statAcked)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.ackWaiters.push({ statSN: last, resolve });
      this.link.solicitAck();
    });
  }

  /**
   * A task set function's step d (RFC 7143 §11.6.2): wait until each session sharing the task
   * set has acknowledged the statuses it sent, at most tmfTransferWaitMs: an initiator that does
   * not answer the NOP-In does not hold the function up for good.
   */
  private async awaitStatusAcks(fn: TmfFunction, sessions: readonly Session[]): Promise<void> {
    if (!(await outlasts(Promise.all(sessions.map((s) => s.statusesAcknowledged())), this.host.tmfTransferWaitMs))) return;
    this.host.count('tmf_status_ack_timeouts');
    this.logger.warn({ function: TMF_NAMES[fn], waitedMs: this.host.tmfTransferWaitMs }, 'initiator did not acknowledge the statuses sent before the task set function: answered without it');
  }

  /**
   * Abort matching tasks: no response is sent for them. Resolves when those already executing
   * have settled. `transfers` (ABORT TASK SET, CLEAR TASK SET: RFC 7143 §11.6.2): a task with
   * R2Ts outstanding stays until the initiator has answered them (`drainDataOut`), and its wait
   * is added there. Without it, such a task ends at once and its R2Ts are retired: the
   * initiator may still answer them (retiredDataOut).
   */
  abortTasks(match: (lun: number, itt: number) => boolean, transfers?: TransferWait[]): Promise<unknown> {
    const waits: Promise<void>[] = [];
    for (const t of this.tasks.values()) {
      if (!match(t.lun, t.itt)) continue;
      t.aborted = true;
      if (t.executing && t.done) waits.push(t.done);
      else if (t.r2ts?.size && transfers && !this.closed) transfers.push(this.startDrain(t));
      else if (t.drain) this.endDrain(t, true);
      else {
        if (t.r2ts?.size && !this.closed) this.retireR2ts(t);
        this.finish(t);
        // Not executing: the data buffer (pooled, partly filled) is ours; nothing of it is written.
        if (t.data) releaseBuffer(t.data);
        t.data = undefined;
      }
    }
    return Promise.all(waits);
  }

  /**
   * Wait for the aborted tasks' R2Ts to be answered (RFC 7143 §11.6.2 b), at most
   * tmfTransferWaitMs: an initiator that stops answering them does not hold the function up for
   * good. Those still waiting then end, their R2Ts retired.
   */
  private async awaitTransfers(fn: TmfFunction, transfers: TransferWait[]): Promise<void> {
    if (transfers.length === 0) return;
    this.host.count('tmf_waited_for_ttt');
    this.logger.info({ function: TMF_NAMES[fn], tasks: transfers.length }, 'task management waits for the R2Ts of the aborted tasks to be answered');
    if (!(await outlasts(Promise.all(transfers.map((t) => t.done)), this.host.tmfTransferWaitMs))) return;
    this.host.count('tmf_ttt_wait_timeouts');
    this.logger.warn({ function: TMF_NAMES[fn], waitedMs: this.host.tmfTransferWaitMs }, 'initiator did not answer the R2Ts of the aborted tasks: task management goes on without them');
    for (const t of transfers) t.giveUp();
  }

  /**
   * Abort the matching SCSI commands held behind a CmdSN gap (a task set function): the
   * initiator sent them before the TMF and counts them among the tasks aborted. Each CmdSN is
   * kept as taken (ABORTED_CMDSN), so that the window still passes it and the command is never
   * executed. `before`: only commands ordered before this CmdSN (in the TMF's own session, those
   * sent after it are not in its scope).
   */
  abortHeld(match: (lun: number) => boolean, before?: number): void {
    for (const [sn, pdu] of this.held) {
      if (pdu === ABORTED_CMDSN || P.opcode(pdu.bhs) !== InitiatorOp.ScsiCommand) continue;
      if (before !== undefined && !P.snLessThan(sn, before)) continue;
      const lun = P.decodeLun(pdu.bhs);
      if (!match(lun < 0 ? LUN_INVALID : lun)) continue;
      this.held.set(sn, ABORTED_CMDSN);
      this.logger.info({ cmdSN: sn, itt: P.itt(pdu.bhs) }, 'command held behind a CmdSN gap aborted');
    }
  }

  /**
   * An immediate task set function with CmdSN `cmdSN`: when commands before it are still
   * missing (ExpCmdSN below `cmdSN`), it waits for them (RFC 7143 §11.5.1: it covers them even
   * not received yet, and is answered once they all are). Until ExpCmdSN reaches `cmdSN`, the
   * commands below it for a logical unit it `covers` are dropped as they come (abortedByTaskSet).
   * Resolves when ExpCmdSN reaches `cmdSN` (or the session ends); undefined when nothing is
   * missing. Runs before taskManagement's first await: no command can slip past it.
   * A CmdSN beyond what the window could ever reach is not waited for: the function is answered
   * as before (an initiator sending one is broken; waiting would drop its commands for good).
   */
  private fence(fn: TmfFunction, cmdSN: number, covers: (lun: number) => boolean): TaskSetFence | undefined {
    if (!P.snLessThan(this.expCmdSN, cmdSN)) return undefined;
    if (!P.snLessOrEqual(cmdSN, (this.expCmdSN + TARGET_LIMITS.queueDepth) >>> 0)) {
      this.logger.warn({ function: TMF_NAMES[fn], cmdSN, expCmdSN: this.expCmdSN }, 'task management CmdSN beyond the window: not deferred');
      return undefined;
    }
    this.host.count('tmf_deferred');
    this.logger.info({ function: TMF_NAMES[fn], cmdSN, expCmdSN: this.expCmdSN }, 'task management deferred until the commands before it are received');
    let reached = () => {};
    const passed = new Promise<void>((r) => (reached = r));
    const f: TaskSetFence = { cmdSN, covers, function: TMF_NAMES[fn], reached, passed, released: false };
    this.fences.push(f);
    return f;
  }

  /**
   * The function of fence `f` has acted (and answered), or given up: released, the commands after
   * it go on; not yet, it no longer holds anything back.
   */
  private endFence(f: TaskSetFence | undefined): void {
    if (!f) return;
    if (!f.released) {
      this.fences = this.fences.filter((x) => x !== f);
      return;
    }
    f.released = false;
    this.barrier--;
    if (!this.barrier && !this.closed) this.dispatchHeld();
  }

  /** Release the deferred task set functions that ExpCmdSN has reached: every command before them is in. */
  private passFences(): void {
    const pending: TaskSetFence[] = [];
    for (const f of this.fences) {
      if (P.snLessThan(this.expCmdSN, f.cmdSN) && !this.closed) pending.push(f);
      else {
        this.logger.info({ function: f.function, cmdSN: f.cmdSN }, 'deferred task management: the commands before it are all received');
        this.barrier++;
        f.released = true;
        f.reached();
      }
    }
    this.fences = pending;
  }

  /**
   * A SCSI command dispatched in CmdSN order (its CmdSN already counted) that a deferred task set
   * function covers: below the function's CmdSN, for a logical unit it covers. It is dropped:
   * never executed, never answered, no R2T (RFC 7143 §11.5.1: aborted although not received yet).
   */
  private abortedByTaskSet(pdu: P.Pdu): boolean {
    if (P.opcode(pdu.bhs) !== InitiatorOp.ScsiCommand) return false;
    const sn = P.cmdSN(pdu.bhs);
    const l = P.decodeLun(pdu.bhs);
    const lun = l < 0 ? LUN_INVALID : l;
    const f = this.fences.find((x) => P.snLessThan(sn, x.cmdSN) && x.covers(lun));
    if (!f) return false;
    this.host.count('cmdsn_aborted_by_task_set');
    this.logger.info({ cmdSN: sn, itt: P.itt(pdu.bhs), lun, function: f.function, tmfCmdSN: f.cmdSN }, 'command covered by a deferred task set function dropped');
    return true;
  }

  private async taskManagement(pdu: P.Pdu, immediate: boolean): Promise<void> {
    const bhs = pdu.bhs;
    const itt = P.itt(bhs);
    const fn = (bhs[1] & 0x7f) as TmfFunction;
    const lun = P.decodeLun(bhs);
    const refItt = bhs.readUInt32BE(20);
    const refCmdSN = bhs.readUInt32BE(32);
    const cmdSN = P.cmdSN(bhs);
    this.host.count(`tmf_${fn}`);
    if (this.type === 'Discovery' || !this.target || !this.nexus) throw new PduRejected(RejectReason.ProtocolError, 'task management in a discovery session');
    const scsi = this.target.scsi;
    const reply = (resp: number) => {
      if (!this.closed) this.link.send(P.tmfResponse(itt, resp, this.seq(true)));
    };
    const lunOk = lun >= 0 && scsi.hasLun(lun);
    switch (fn) {
      case TmfFunction.AbortTask: {
        const t = this.tasks.get(refItt);
        if (t && t.lun === lun) {
          await this.abortTasks((_l, i) => i === refItt);
          this.logger.info({ itt: refItt }, 'task aborted');
          return reply(TmfResponse.FunctionComplete);
        }
        // Not received yet, or held behind a CmdSN gap, but in the window and ordered before
        // this TMF: it is considered received, and aborted (RFC 7143 §11.5.1 case b). Its CmdSN
        // stays taken (ABORTED_CMDSN): ExpCmdSN passes it once the commands before it are in
        // (at once when it is ExpCmdSN itself: see dispatch), and should the command still
        // come it is discarded, never executed. A task that already completed does not exist
        // any more. Runs before the first await: dispatch passes ExpCmdSN on right after this call.
        if (P.snLessOrEqual(this.expCmdSN, refCmdSN) && P.snLessThan(refCmdSN, cmdSN) && P.snLessOrEqual(refCmdSN, this.maxCmdSN)) {
          this.held.set(refCmdSN, ABORTED_CMDSN);
          this.logger.info({ itt: refItt, cmdSN: refCmdSN }, 'task aborted before it was dispatched');
          return reply(TmfResponse.FunctionComplete);
        }
        return reply(TmfResponse.TaskDoesNotExist);
      }
      case TmfFunction.AbortTaskSet:
      case TmfFunction.ClearTaskSet:
      case TmfFunction.LogicalUnitReset: {
        if (!lunOk) return reply(TmfResponse.LunDoesNotExist);
        const covers = (l: number) => l === lun;
        const sessions = fn === TmfFunction.AbortTaskSet ? [this] : this.host.sessionsOf(this.target.name);
        for (const s of sessions) s.abortHeld(covers, s === this ? cmdSN : undefined);
        const fence = immediate ? this.fence(fn, cmdSN, covers) : undefined;
        // ABORT TASK SET and CLEAR TASK SET wait for the R2Ts of the tasks they abort to be
        // answered (RFC 7143 §11.6.2 b), LOGICAL UNIT RESET does not: the initiator is not
        // bound to answer them, and Linux (FastAbort=Yes, its default) stops.
        const transfers: TransferWait[] | undefined = fn === TmfFunction.LogicalUnitReset ? undefined : [];
        const aborted = sessions.map((s) => s.abortTasks(covers, transfers));
        try {
          await Promise.all([fence?.passed, ...aborted, transfers && this.awaitTransfers(fn, transfers)]);
          const resp = scsi.taskManagement(fn, lun, this.nexus);
          this.logger.info({ function: TMF_NAMES[fn], lun, response: resp }, 'task management');
          // ABORT TASK SET and CLEAR TASK SET: the statuses sent before are acknowledged first (§11.6.2 d).
          if (fn !== TmfFunction.LogicalUnitReset) await this.awaitStatusAcks(fn, sessions);
          return reply(resp);
        } finally {
          this.endFence(fence);
        }
      }
      case TmfFunction.TargetWarmReset: {
        const covers = () => true;
        const sessions = this.host.sessionsOf(this.target.name);
        for (const s of sessions) s.abortHeld(covers, s === this ? cmdSN : undefined);
        const fence = immediate ? this.fence(fn, cmdSN, covers) : undefined;
        try {
          await Promise.all([fence?.passed, ...sessions.map((s) => s.abortTasks(covers))]);
          const resp = scsi.taskManagement(fn, lun < 0 ? 0 : lun, this.nexus);
          this.logger.info({ function: TMF_NAMES[fn], response: resp }, 'task management');
          return reply(resp);
        } finally {
          this.endFence(fence);
        }
      }
      case TmfFunction.ClearAca:
        if (!lunOk) return reply(TmfResponse.LunDoesNotExist);
        return reply(scsi.taskManagement(fn, lun, this.nexus));
      case TmfFunction.TaskReassign:
        return reply(TmfResponse.TaskAllegianceReassignmentNotSupported);
      case TmfFunction.TargetColdReset:
        return reply(TmfResponse.NotSupported);
      default:
        return reply(TmfResponse.Rejected);
    }
  }

  // ---- Text ---------------------------------------------------------------------------------

  private text(pdu: P.Pdu): void {
    const bhs = pdu.bhs;
    const itt = P.itt(bhs);
    const ttt = P.ttt(bhs);
    const cont = (bhs[1] & 0x40) !== 0;
    const lunField = bhs.subarray(8, 16);
    if (ttt !== RESERVED_TAG) {
      const c = this.textContinuation;
      if (!c || c.ttt !== ttt) throw new PduRejected(RejectReason.InvalidPduField, `Text Request with unknown TTT 0x${ttt.toString(16)}`);
      return this.sendText(itt, lunField, c.rest);
    }
    this.textContinuation = undefined;
    const total = this.textPending.reduce((n, b) => n + b.length, 0) + pdu.data.length;
    if (total > TARGET_LIMITS.maxTextBytes) {
      this.textPending = [];
      throw new PduRejected(RejectReason.ProtocolError, 'text request too long');
    }
    this.textPending.push(Buffer.from(pdu.data));
    if (cont) {
      // More text follows: acknowledge with an empty response (RFC 7143 §11.10.2).
      this.link.send(P.textResponse(false, false, itt, this.allocTtt(), lunField, this.seq(true), 0));
      return;
    }
    const text = Buffer.concat(this.textPending);
    this.textPending = [];
    let pairs: TextPairs;
    try {
      pairs = parseText(text);
    } catch (e) {
      throw new PduRejected(RejectReason.ProtocolError, (e as Error).message);
    }
    const answers: TextPairs = [];
    for (const [k, v] of pairs) {
      if (k === 'SendTargets') answers.push(...this.sendTargets(v));
      else if (k === 'MaxRecvDataSegmentLength') answers.push(...negotiate([[k, v]], this.host.offer, this.params).answers);
      else answers.push([k, KNOWN_LOGIN_ONLY.has(k) ? 'Reject' : 'NotUnderstood']);
    }
    this.sendText(itt, lunField, encodeText(answers));
  }

  private allocTtt(): number {
    const t = this.nextTtt++;
    if (this.nextTtt >= RESERVED_TAG) this.nextTtt = 1;
    return t;
  }

  private sendText(itt: number, lunField: Buffer, data: Buffer): void {
    const max = this.params.initiatorMaxRecvDataSegmentLength;
    if (data.length <= max) {
      this.textContinuation = undefined;
      this.link.send(P.textResponse(true, false, itt, RESERVED_TAG, lunField, this.seq(true), data.length), data);
      return;
    }
    const ttt = this.allocTtt();
    this.textContinuation = { itt, ttt, rest: data.subarray(max) };
    this.link.send(P.textResponse(false, true, itt, ttt, lunField, this.seq(true), max), data.subarray(0, max));
  }

  private sendTargets(value: string): TextPairs {
    const all = this.host.visibleTargets(this.initiatorName);
    let list: readonly TargetEntry[];
    if (value === 'All') list = this.type === 'Discovery' ? all : this.target ? [this.target] : [];
    else if (value === '') list = this.target ? [this.target] : [];
    else list = all.filter((t) => t.name === value);
    const host = this.link.localAddress.includes(':') ? `[${this.link.localAddress}]` : this.link.localAddress;
    const out: TextPairs = [];
    for (const t of list) out.push(['TargetName', t.name], ['TargetAddress', `${host}:${this.link.localPort},${this.host.portalGroupTag}`]);
    return out;
  }

  // ---- Logout -------------------------------------------------------------------------------

  private async logout(pdu: P.Pdu): Promise<void> {
    const bhs = pdu.bhs;
    const itt = P.itt(bhs);
    const reason = (bhs[1] & 0x7f) as LogoutReason;
    if (reason === LogoutReason.RemoveConnectionForRecovery) {
      this.link.send(P.logoutResponse(itt, LogoutResponseCode.RecoveryNotSupported, 0, 0, this.seq(true)));
      return;
    }
    this.loggingOut = true;
    // Commands already received complete and are answered before the logout response.
    await Promise.all(this.tasks.values().map((t) => t.done).filter(Boolean));
    if (this.closed) return;
    this.link.send(P.logoutResponse(itt, LogoutResponseCode.Success, this.params.defaultTime2Wait, this.params.defaultTime2Retain, this.seq(true)));
    this.logger.info({ reason: reason === LogoutReason.CloseSession ? 'close session' : 'close connection' }, 'logout');
    this.host.count('logouts');
    this.link.end();
  }

  /** Wait for executing commands (bounded), then mark closed. Responses after this are dropped. */
  async drain(timeoutMs: number): Promise<void> {
    const pending = this.tasks.values().map((t) => t.done).filter((d): d is Promise<void> => !!d);
    if (pending.length) await outlasts(Promise.all(pending), timeoutMs);
  }

  /** The connection is gone: abort everything. */
  close(): Promise<unknown> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.held.clear();
    for (const h of this.heldDataOut.values()) for (const pdu of h.pdus) releaseBuffer(pdu.data);
    this.heldDataOut.clear();
    this.retiredR2ts.clear();
    this.passFences();
    for (const w of this.ackWaiters.splice(0)) w.resolve();
    const settled = this.abortTasks(() => true);
    this.host.sessionEnded(this);
    return settled;
  }
}

/** Whether `wait` is still pending after `ms` (it is not waited for any longer). */
async function outlasts(wait: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    wait.then(() => false),
    new Promise<boolean>((r) => { timer = setTimeout(() => r(true), ms); }),
  ]);
  clearTimeout(timer);
  return timedOut;
}

const KNOWN_LOGIN_ONLY = new Set(['HeaderDigest', 'DataDigest', 'MaxBurstLength', 'FirstBurstLength', 'ImmediateData', 'InitialR2T', 'MaxOutstandingR2T', 'DataPDUInOrder', 'DataSequenceInOrder', 'DefaultTime2Wait', 'DefaultTime2Retain', 'ErrorRecoveryLevel', 'MaxConnections', 'InitiatorName', 'TargetName', 'SessionType', 'AuthMethod']);

const TMF_NAMES: Record<number, string> = {
  1: 'ABORT TASK', 2: 'ABORT TASK SET', 3: 'CLEAR ACA', 4: 'CLEAR TASK SET', 5: 'LOGICAL UNIT RESET', 6: 'TARGET WARM RESET', 7: 'TARGET COLD RESET', 8: 'TASK REASSIGN',
};

/** A CDB longer than 16 bytes: the BHS part followed by an Extended CDB AHS (type 1). */
function extendedCdb(cdb: Buffer, ahs: Buffer): Buffer {
  let off = 0;
  while (off + 4 <= ahs.length) {
    const len = ahs.readUInt16BE(off);
    const type = ahs[off + 2];
    if (type === 1 && len >= 1) return Buffer.concat([cdb, ahs.subarray(off + 4, off + 3 + len)]);
    if (len === 0) break;
    off += (3 + len + 3) & ~3;
  }
  return cdb;
}

function unknownTtt(ttt: number): IscsiError {
  return new IscsiError(IscsiErrorCode.Protocol, `Data-Out with unknown TTT 0x${ttt.toString(16)}`);
}

/** A Data-Out PDU not at the next offset of its task's data (DataPDUInOrder=Yes, DataSequenceInOrder=Yes). */
function outOfOrder(task: Task, offset: number): IscsiError {
  return new IscsiError(IscsiErrorCode.Protocol, `Data-Out at offset ${offset} for ITT 0x${task.itt.toString(16)}, expected ${task.received}: data must come in order, each byte once`);
}
