/** What command handlers see of the target beyond their LU. */
import type { Volume } from '../volume/volume';
import type { Nexus, ScsiRequest, ScsiResult } from './port';
import type { LogicalUnit } from './lu';

export interface TargetEnv {
  readonly targetName: string;
  readonly luns: ReadonlyMap<number, LogicalUnit>;
  readonly resolveByDesignator?: (naa: Buffer) => Volume | undefined;
  /** I_T nexus key: `${initiatorPortName}|${relativeTargetPortId}`. */
  itn(nexus: Nexus): string;
  /** Counters the handlers feed (bytes moved). */
  readonly counters: { bytesRead: number; bytesWritten: number };
}

export type Handler = (lu: LogicalUnit, req: ScsiRequest, env: TargetEnv) => ScsiResult | Promise<ScsiResult>;
