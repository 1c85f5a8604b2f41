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

export interface ShipperSource {
  readonly siteId: string;
  volumes(): VolumeDescriptor[];
  /** Highest sequence number appended. */
  headSeq(): number;
  /** Oldest sequence number still readable (records before it were trimmed or folded). */
  oldestSeq(): number;
  /** Records with seq > afterSeq in order, stopping once `maxBytes` of data is reached (at least one if any). */
  readAfter(afterSeq: number, maxBytes: number): Promise<ReplicatedRecord[]>;
  /** Resolves once headSeq() > afterSeq (or at once if it already is). */
  waitForAppend(afterSeq: number): Promise<void>;
  /** Time (ms) of the record with this sequence number, if still retained. */
  timeOf(seq: number): number | undefined;
  /** The replica holds everything ≤ seq durably: the source may trim it. */
  replicaAcked(seq: number): void;
}

export interface ReceiverSink {
  readonly siteId: string;
  /** Highest sequence number durable at this replica. */
  durableSeq(): number;
  /** Highest sequence number applied to the volumes (a prefix of the primary's history). */
  appliedSeq(): number;
  /** Make sure these volumes exist here (created empty when new). */
  ensureVolumes(volumes: VolumeDescriptor[]): Promise<void>;
  /** Store records durably, in order (records[0].seq === durableSeq() + 1); then apply them asynchronously. */
  store(records: ReplicatedRecord[]): Promise<void>;
}
