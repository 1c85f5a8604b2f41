/**
 * The targets the iSCSI server serves, with their login policy. The appliance builds the
 * directory; the SCSI side of each target is a `ScsiTarget` from `scsi/port`.
 */
import type { ScsiTarget } from '../scsi/port';

export interface ChapCredentials {
  readonly user: string;
  readonly secret: string;
}

export interface TargetAuth {
  /** One-way CHAP: the initiator must prove this user/secret. Absent: AuthMethod=None. */
  readonly chap?: ChapCredentials;
  /** Mutual CHAP: the target proves this user/secret back to the initiator. */
  readonly mutualChap?: ChapCredentials;
  /** Initiator IQNs allowed to log in; empty or absent: all. */
  readonly allowedInitiators?: readonly string[];
}

export interface TargetEntry {
  readonly name: string;
  readonly alias?: string;
  readonly auth: TargetAuth;
  readonly scsi: ScsiTarget;
}

/** What the iSCSI server serves; the appliance provides it and may change it at runtime. */
export interface TargetDirectory {
  targets(): readonly TargetEntry[];
  lookup(name: string): TargetEntry | undefined;
}
