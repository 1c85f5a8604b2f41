/** The SCSI command layer (SPC-4 / SBC-3) behind the iSCSI transport. */
export { createScsiTarget } from './target';
export type { LogicalUnitConfig, ScsiStats, ScsiTargetHandle, ScsiTargetOptions } from './target';
export type { CopyPeer } from './env';
export { naaDesignator } from './vpd';
export { SenseError, buildSense, parseSense } from './sense';
export type { ScsiRequest, ScsiResult, ScsiTarget, ScsiTransport, Nexus } from './port';
