/** What command handlers see of the target beyond their LU. */
import type { Nexus, ScsiRequest, ScsiResult } from './port';
import type { LogicalUnit } from './lu';

/** An LU another target lends EXTENDED COPY, and the I_T nexus whose access rights apply to it there. */
export interface CopyTargetLu {
  readonly lu: LogicalUnit;
  /** The I_T nexus key, at the LU's target, of the initiator port that issued the copy. */
  readonly itn: string;
}

/** Another SCSI target of the same appliance, as EXTENDED COPY may reach it. */
export interface CopyPeer {
  /**
   * Its LU with this NAA designator (16 bytes), only when the initiator port `initiatorPortName`
   * has an I_T nexus with a session to this target now (so it passed this target's login
   * checks: initiator ACL, CHAP); otherwise undefined (COPY TARGET DEVICE NOT REACHABLE).
   */
  copyTargetFor(naa: Buffer, initiatorPortName: string): CopyTargetLu | undefined;
}

export interface TargetEnv {
  readonly targetName: string;
  readonly luns: ReadonlyMap<number, LogicalUnit>;
  /** The other target holding an LU with this NAA designator (EXTENDED COPY between targets). */
  readonly copyPeerByDesignator?: (naa: Buffer) => CopyPeer | undefined;
  /** I_T nexus key: `${initiatorPortName}|${relativeTargetPortId}`. */
  itn(nexus: Nexus): string;
  /**
   * Abort, through the transport, the tasks for `lun` of these I_T nexuses (keys as `itn`), as
   * ABORT TASK SET does; resolves once those already executing have settled (PREEMPT AND ABORT).
   */
  abortNexusTasks(lun: number, itns: readonly string[]): Promise<void>;
  /** Counters the handlers feed (bytes moved). */
  readonly counters: { bytesRead: number; bytesWritten: number };
}

export type Handler = (lu: LogicalUnit, req: ScsiRequest, env: TargetEnv) => ScsiResult | Promise<ScsiResult>;
