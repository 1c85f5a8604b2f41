import { OffsiteError } from '../common/errors';

export const JournalErrorCode = {
  Open: 'JOURNAL_OPEN',
  Write: 'JOURNAL_WRITE',
  Closed: 'JOURNAL_CLOSED',
  Corrupt: 'JOURNAL_CORRUPT',
  UnknownVolume: 'JOURNAL_UNKNOWN_VOLUME',
  OutsideWindow: 'JOURNAL_OUTSIDE_WINDOW',
  Sequence: 'JOURNAL_SEQUENCE',
  NoSpace: 'JOURNAL_NO_SPACE',
} as const;

export class JournalError extends OffsiteError {}
