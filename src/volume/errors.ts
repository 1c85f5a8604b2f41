import { OffsiteError } from '../common/errors';

/** A volume operation failed; the SCSI layer turns it into MEDIUM ERROR (or DATA PROTECT). */
export class VolumeError extends OffsiteError {}

export const VolumeErrorCode = {
  ReadOnly: 'VOLUME_READ_ONLY',
  OutOfRange: 'VOLUME_OUT_OF_RANGE',
  Io: 'VOLUME_IO',
  SizeMismatch: 'VOLUME_SIZE_MISMATCH',
  BadName: 'VOLUME_BAD_NAME',
  NoSpace: 'VOLUME_NO_SPACE',
  /** A volume may grow, never shrink (the blocks past the new end would be lost). */
  Shrink: 'VOLUME_SHRINK',
  /** The volume was removed from the appliance (offsite remove-volume). */
  Removed: 'VOLUME_REMOVED',
} as const;
