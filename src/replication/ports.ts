/**
 * What replication needs from the storage below it, as two narrow ports: the primary's journal
 * as a source of ordered records, and the replica's journal + volumes as a sink. The appliance
 * adapts the real journal to these; tests can use in-memory ones.
 */

export type RecordOp = 'write' | 'writeSame' | 'unmap';

/** One journal record as it travels the wire. `seq` is the primary's global sequence number. */
export interface ReplicatedRecord {
  seq: number;
  /** Primary's wall-clock time of the write, ms since the epoch. */
  timeMs: number;
  volume: string;
  op: RecordOp;
  offsetBytes: number;
  lengthBytes: number;
  /** write: the data; writeSame: one block pattern; unmap: none. */
  data?: Buffer;
}

export interface VolumeDescriptor {
  name: string;
  sizeBytes: number;
  blockSize: number;
  /** hex of the volume's 16-byte identity on the primary */
  uuid: string;
}

/** A volume the primary removed (offsite remove-volume): every record of it has a sequence number at or below `lastSeq`. */
export interface RemovedVolumeDescriptor {
  name: string;
  lastSeq: number;
  /** Its geometry: a replica that never had the volume (added and removed between two handshakes) creates it to take the records still to come. */
  sizeBytes?: number;
  blockSize?: number;
}

/** A named point of the primary's history (offsite bookmark), numbered by the primary. */
export interface BookmarkDescriptor {
  id: number;
  name: string;
  seq: number;
  timeMs: number;
}

export interface ShipperSource {
  readonly siteId: string;
  volumes(): VolumeDescriptor[];
  /** Highest sequence number appended. */
  headSeq(): number;
  /** Oldest sequence number still readable (records before it were trimmed or folded). */
  oldestSeq(): number;
  /**
   * Records with seq > afterSeq in order, stopping once `maxBytes` of data is reached (at least
   * one if any). The caller gives each record's data back with `releaseBuffer` once done with it.
   * `into`: memory the source may read data into, one record after another from its start (then
   * valid only until the caller reuses it); records are never split across it and other memory.
   * `maxRecords`: at most this many records (a run without data, such as UNMAPs, is bounded by
   * nothing else); a source that reads more anyway has the rest given back by the caller.
   */
  readAfter(afterSeq: number, maxBytes: number, into?: Buffer, maxRecords?: number): Promise<ReplicatedRecord[]>;
  /** Resolves once headSeq() > afterSeq (or at once if it already is). */
  waitForAppend(afterSeq: number): Promise<void>;
  /** Data bytes of the records after `afterSeq` (absent: the shipper never waits for a fuller segment). */
  bytesAfter?(afterSeq: number): number;
  /** Time (ms) of the record with this sequence number, if still retained. */
  timeOf(seq: number): number | undefined;
  /**
   * How long ago (ms, by the monotonic clock) the record with this sequence number was written,
   * if still retained. Absent: the age comes from timeOf and the wall clock (which a step moves).
   */
  writtenAgoMs?(seq: number): number | undefined;
  /** The replica holds everything ≤ seq durably: the source may trim it. */
  replicaAcked(seq: number): void;
  /** Everything ≤ seq was sent (a reconnect resends from the last ack): a hint to let go of cached records. */
  shipped?(seq: number): void;
  /** Bookmarks (named points, offsite bookmark) with id > afterId, by id: sent with the pings until the replica has them. */
  bookmarksAfter?(afterId: number): BookmarkDescriptor[];
  /** The first bookmarked sequence number > seq: a coalesced batch never reaches past it (a bookmark stays a point the replica can go back to). */
  nextBookmarkAfter?(seq: number): number | undefined;
  /** The volumes this primary removed, sent in the handshake: the replica retires its copy of each once it has every write of it. */
  removedVolumes?(): RemovedVolumeDescriptor[];
  /** The history this primary's data descends from (generations), sent in the handshake. */
  lineage?(): unknown;
  /**
   * The replica holds records of this primary's current generation past its head, that this
   * primary lost: start a generation that forks at the current one's start (sent in the next
   * handshake), so that the replica gives up that generation's records and resyncs.
   */
  forkHistory?(): Promise<void>;
  /** Full / delta sync of the images (absent: the replica must be fed from the journal alone). */
  readonly sync?: SyncSource;
}

export interface SyncSource {
  /** Every record ≤ this sequence is in the images: a copy taken from now on, plus the journal after it, is complete. */
  imageSeq(): number;
  readImage(volume: string, offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** Mapped (allocated) extents of a range; unmapped ones read as zeros. */
  allocated(volume: string, offsetBytes: number, lengthBytes: number): Promise<{ offsetBytes: number; lengthBytes: number; mapped: boolean }[]>;
}

/** Where an unfinished sync stands at the replica. */
export interface SyncCursor {
  fromSeq: number;
  volume: string;
  offsetBytes: number;
  /** The replica held data when the sync began: chunks are compared by hash (else only non-zero ones are sent). */
  compare?: boolean;
}

export interface ReceiverSink {
  readonly siteId: string;
  /** Highest sequence number durable at this replica. */
  durableSeq(): number;
  /** Highest sequence number applied to the volumes (a prefix of the primary's history). */
  appliedSeq(): number;
  /** The primary's identity at each handshake; throws to refuse a primary this replica does not follow. */
  acceptPrimary?(siteId: string, lineage?: unknown): Promise<void>;
  /** The volumes the primary removed (each handshake; empty when none), and the oldest sequence its journal still holds. */
  primaryRemovedVolumes?(removed: RemovedVolumeDescriptor[], primaryOldestSeq?: number): Promise<void>;
  /** Make sure these volumes exist here (created empty when new). */
  ensureVolumes(volumes: VolumeDescriptor[]): Promise<void>;
  /**
   * Store records durably, in order, then apply them asynchronously. They cover the sequence
   * range durableSeq()+1 .. toSeq; a coalesced batch omits overwritten records and is applied whole.
   * `payloads`: pooled buffers (common/buffer-pool) the records' data are views of, handed over:
   * the sink gives each back once nothing of it is needed any more (or never, if it cannot tell).
   * `ends`: the last sequence number of each segment stored together (default: just toSeq),
   * so that the sink can tell which of them were coalesced.
   */
  store(records: ReplicatedRecord[], toSeq: number, payloads?: Buffer[], ends?: number[]): Promise<void>;
  readonly sync?: SyncSink;
  /** Keep the primary's bookmarks (durably); resolves to the highest id this replica holds. */
  storeBookmarks?(bookmarks: BookmarkDescriptor[]): Promise<number>;
  /**
   * Online verify: compare a range's chunk hashes (8 bytes per SYNC_CHUNK_BYTES) with this
   * replica's volume once everything stored so far is applied, before anything stored later.
   * Must queue the comparison before it returns (the next store may follow at once).
   */
  verify?(volume: string, offsetBytes: number, lengthBytes: number, hashes: Buffer): Promise<VerifyAnswer>;
  /** verify --repair: write the primary's data over a range, queued like verify(). */
  repair?(volume: string, offsetBytes: number, data: Buffer): Promise<VerifyAnswer>;
}

/** The replica's answer to one verify (or repair) range. */
export type VerifyAnswer = { mismatched: number[] } | { repaired: true } | { notReady: string };

/**
 * One range the primary hashed for online verify, to be compared at the replica at a point of
 * the stream where the replica's copy must equal it: after the record `seq` and before the
 * first later record that touched the range (`dirtySeq()`, Infinity while none has).
 */
export interface VerifyProbe {
  volume: string;
  offsetBytes: number;
  lengthBytes: number;
  seq: number;
  /** 8 bytes per chunk; empty for a repair. */
  hashes: Buffer;
  /** A repair: the range's data, to be written over the replica's copy. */
  data?: Buffer;
  dirtySeq(): number;
}

/**
 * What became of a probe: compared (the chunks that differ, by index within the range); stale
 * (a write overtook it before it could be placed); linkDown (the connection dropped first);
 * notReady (the replica is syncing); unsupported (the replica does not verify).
 */
export type VerifyOutcome =
  | { kind: 'compared'; mismatched: number[] }
  | { kind: 'repaired' }
  | { kind: 'stale' }
  | { kind: 'linkDown' }
  | { kind: 'notReady'; reason: string }
  | { kind: 'unsupported' };

export interface SyncSink {
  /** Nothing was ever written to these volumes here (a sync can skip zero chunks without comparing). */
  isFresh(): boolean;
  /** An unfinished sync to resume, if any. */
  cursor(): SyncCursor | undefined;
  /** A full sync starts: forget the journal, history restarts after `fromSeq`. */
  begin(fromSeq: number, volumes: string[]): Promise<void>;
  /** 8-byte hash per SYNC_CHUNK_BYTES chunk of a volume, from `fromOffset` to its end. */
  hashes(volume: string, fromOffset: number): Promise<Buffer>;
  /** Write one chunk (undefined data: zeros) and remember the progress. */
  chunk(volume: string, offsetBytes: number, lengthBytes: number, data: Buffer | undefined): Promise<void>;
  /** The copy is complete; the replica is consistent once it has applied `consistentSeq` (primary time `consistentTimeMs`, when sent). */
  end(fromSeq: number, consistentSeq: number, consistentTimeMs?: number): Promise<void>;
}
