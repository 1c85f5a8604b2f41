/**
 * The SCSI port: what a transport (iscsi/) hands to the SCSI layer and gets back.
 * A CDB goes in with its data-out; status, sense and data-in come out. `scsi/` implements
 * `ScsiTarget`; `iscsi/` (one layer up) calls it and knows nothing of blocks or volumes.
 */

import { Asc, SenseKey, Status } from './constants';
import { buildSense } from './sense';

/**
 * The result a transport gives a command whose data-out did not add up to what was asked (an
 * iSCSI R2T answered short, unsolicited data stopped early): CHECK CONDITION, ABORTED COMMAND,
 * INCORRECT AMOUNT OF DATA (RFC 7143 §11.4.7.2). Fixed-format sense: the transport does not
 * know the LU's D_SENSE. Built here, so that the transport needs no sense codes of its own.
 */
export const INCORRECT_AMOUNT_OF_DATA: ScsiResult = Object.freeze({ status: Status.CheckCondition, sense: buildSense(false, SenseKey.AbortedCommand, Asc.IncorrectAmountOfData) });

/** An I_T nexus (SAM-5): one iSCSI session of one initiator port to one target port. */
export interface Nexus {
  /** InitiatorName from login, e.g. iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test */
  readonly initiatorName: string;
  /** The 6-byte ISID of the session. */
  readonly isid: Buffer;
  readonly targetName: string;
  /** Target portal group tag. */
  readonly tpgt: number;
  /**
   * Stable identity of the initiator port: `${initiatorName},i,0x${isid hex}` (RFC 7143 §4.4,
   * the iSCSI initiator port name used in SPC TransportIDs). Same value after reinstatement.
   */
  readonly initiatorPortName: string;
  /** Relative target port identifier (SPC-4 7.8.6.x), >= 1. */
  readonly relativeTargetPortId: number;
  /** Target port group (for ALUA / REPORT TARGET PORT GROUPS), >= 1. */
  readonly targetPortGroup: number;
  /** Unique per live session (changes on reinstatement); for logs. */
  readonly sessionId: string;
}

/** SAM task attributes as carried in the SCSI Command PDU ATTR field. */
export const enum TaskAttribute {
  Untagged = 0,
  Simple = 1,
  Ordered = 2,
  HeadOfQueue = 3,
  Aca = 4,
}

export interface ScsiRequest {
  readonly nexus: Nexus;
  /** Decoded LUN (flat / peripheral addressing), 0-based. */
  readonly lun: number;
  /** The CDB (16 bytes from the BHS, or longer with an extended-CDB AHS). */
  readonly cdb: Buffer;
  readonly taskTag: number;
  readonly taskAttribute: TaskAttribute;
  /** ExpectedDataTransferLength from the PDU. */
  readonly expectedDataLength: number;
  /** R and W bits of the PDU. */
  readonly readFlag: boolean;
  readonly writeFlag: boolean;
  /**
   * All data-out of the command, gathered by the iSCSI layer (immediate, unsolicited and
   * solicited), exactly `expectedDataLength` bytes when writeFlag is set; otherwise undefined.
   */
  readonly dataOut?: Buffer;
}

export interface ScsiResult {
  /** SAM status byte (0 GOOD, 2 CHECK CONDITION, 8 BUSY, 0x18 RESERVATION CONFLICT, 0x28 TASK SET FULL, 0x40 TASK ABORTED). */
  readonly status: number;
  /** Sense data (fixed or descriptor format) when status is CHECK CONDITION. */
  readonly sense?: Buffer;
  /**
   * Data-in the command produced. The iSCSI layer sends min(length, expectedDataLength)
   * and reports the residual overflow/underflow itself.
   */
  readonly dataIn?: Buffer;
  /**
   * For commands with data-out: how many bytes the CDB defines (e.g. blocks × blockSize).
   * The iSCSI layer reports residual overflow/underflow against expectedDataLength.
   */
  readonly dataOutLength?: number;
  /**
   * The command no longer refers to its dataOut (nor does anything it handed it to): the
   * transport may reuse that memory. Unset, the transport leaves the buffer to the garbage collector.
   */
  readonly dataOutDone?: boolean;
}

/** Task management functions (RFC 7143 §11.5.1). */
export const enum TmfFunction {
  AbortTask = 1,
  AbortTaskSet = 2,
  ClearAca = 3,
  ClearTaskSet = 4,
  LogicalUnitReset = 5,
  TargetWarmReset = 6,
  TargetColdReset = 7,
  TaskReassign = 8,
}

/** Task management response codes (RFC 7143 §11.6.1). */
export const enum TmfResponse {
  FunctionComplete = 0,
  TaskDoesNotExist = 1,
  LunDoesNotExist = 2,
  TaskStillAllegiant = 3,
  TaskAllegianceReassignmentNotSupported = 4,
  NotSupported = 5,
  AuthorizationFailed = 6,
  Rejected = 255,
}

/**
 * What the SCSI layer asks of the transport that carries its I_T nexuses (the iSCSI server
 * implements it): the SCSI layer decides which tasks end, only the transport holds them.
 */
export interface ScsiTransport {
  /**
   * Abort the tasks for `lun` of every I_T nexus `nexus` matches, as ABORT TASK SET does (no
   * status is sent for them); resolves once those already executing have settled. Used by
   * PREEMPT AND ABORT (SPC-4 §5.12.11.2.5), which completes only after this.
   */
  abortNexusTasks(lun: number, nexus: (n: Nexus) => boolean): Promise<void>;
}

/** One SCSI target device: its logical units and the task-management effects on them. */
export interface ScsiTarget {
  /**
   * Run one command. Never rejects: every failure becomes a CHECK CONDITION result.
   * Commands of one nexus are called in CmdSN order; the backend may complete them out of order
   * (SIMPLE tasks) but must honour ORDERED / HEAD OF QUEUE semantics itself if it reorders.
   */
  execute(req: ScsiRequest): Promise<ScsiResult>;
  /** Whether the LUN exists (TMF LUN checks). */
  hasLun(lun: number): boolean;
  /**
   * The SCSI-level effects of a task management function (unit attentions, reservation
   * release). The iSCSI layer itself aborts the affected iSCSI tasks (in every session of
   * the target for CLEAR TASK SET, LU RESET and TARGET WARM RESET) before calling this.
   */
  taskManagement(fn: TmfFunction, lun: number, nexus: Nexus): TmfResponse;
  /**
   * The transport whose sessions carry this target's nexuses (set at each login; the last one
   * wins). Without one, PREEMPT AND ABORT cannot abort the preempted nexuses' tasks in flight.
   */
  attachTransport(transport: ScsiTransport): void;
  /** A session of this nexus started (`reinstated`: it replaces an older session of the same ISID). */
  nexusStarted(nexus: Nexus, reinstated: boolean): void;
  /** The session ended (logout, drop, reinstatement); in-flight commands were aborted. */
  nexusEnded(nexus: Nexus): void;
}
