import { OffsiteError } from '../common/errors';

export const JournalErrorCode = {
  Open: 'JOURNAL_OPEN',
  Write: 'JOURNAL_WRITE',
  Closed: 'JOURNAL_CLOSED',
  Corrupt: 'JOURNAL_CORRUPT',
  /**
   * A record at or below the synced point (acknowledged as durable) fails its check: dropping it
   * would lose an acknowledged write, so the journal refuses to open.
   */
  DurableRecordCorrupt: 'JOURNAL_DURABLE_RECORD_CORRUPT',
  UnknownVolume: 'JOURNAL_UNKNOWN_VOLUME',
  OutsideWindow: 'JOURNAL_OUTSIDE_WINDOW',
  /** Inside a batch a replica received coalesced: not a state the primary ever had. */
  CoalescedPoint: 'JOURNAL_COALESCED_POINT',
  BadBookmark: 'BOOKMARK_BAD_NAME',
  BookmarkExists: 'BOOKMARK_EXISTS',
  UnknownBookmark: 'BOOKMARK_UNKNOWN',
  Sequence: 'JOURNAL_SEQUENCE',
  NoSpace: 'JOURNAL_NO_SPACE',
} as const;

export class JournalError extends OffsiteError {}
