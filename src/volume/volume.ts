/**
 * The block-device interface every layer above `volume/` works against.
 * Implemented by the file volume, the journaled volume and the replica volume.
 *
 * All offsets and lengths are in bytes and always multiples of `blockSize`
 * (the SCSI layer validates LBAs before calling). Promises reject with
 * VolumeError; a rejected write or flush is never acknowledged to an initiator.
 */
export interface WriteOptions {
  /** Force Unit Access: durable before the promise resolves. */
  fua?: boolean;
}

export interface AllocationExtent {
  offsetBytes: number;
  lengthBytes: number;
  /** false for a deallocated (unmapped / hole) extent */
  mapped: boolean;
}

export interface Volume {
  readonly name: string;
  /** Logical block size in bytes (512). */
  readonly blockSize: number;
  readonly sizeBytes: number;
  /** Writes are refused (replica, or operator choice). */
  readonly readOnly: boolean;
  /**
   * Stable unique identity of this volume (16 bytes), created with the volume and
   * persisted beside it; used for the VPD 0x80 serial and the 0x83 NAA designator.
   */
  readonly uuid: Buffer;
  /** Whether the volume is thin (supports unmap / holes). */
  readonly thin: boolean;

  /** Read `length` bytes at `offset`. May return a buffer larger than requested? No: exactly `length`. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /**
   * Write `data` at `offset`. Resolves when the write is ordered (and durable with fua). Once
   * the promise settles the volume no longer refers to `data` (the caller may reuse it); a volume
   * that keeps it longer holds it with `retainBuffer` (common/buffer-pool).
   */
  write(offsetBytes: number, data: Buffer, opts?: WriteOptions): Promise<void>;
  /** Write `pattern` (exactly one block) repeatedly over the range (WRITE SAME). */
  writeSame(offsetBytes: number, lengthBytes: number, pattern: Buffer, opts?: WriteOptions): Promise<void>;
  /** Deallocate the range; it then reads back as zeros (LBPRZ=1). Durable when it resolves with fua (WCE=0). */
  unmap(offsetBytes: number, lengthBytes: number, opts?: WriteOptions): Promise<void>;
  /** Everything acknowledged before this call is durable when it resolves (SYNCHRONIZE CACHE). */
  flush(): Promise<void>;
  /** Allocation status starting at `offset` (GET LBA STATUS); at least one extent. */
  allocation(offsetBytes: number, lengthBytes: number): Promise<AllocationExtent[]>;
  close(): Promise<void>;
}
