/**
 * The replica's view of a volume: initiators read it (never write: DATA PROTECT) while the
 * receiver applies the primary's records underneath. Records are applied a segment at a time
 * under an exclusive gate shared by every volume of the site, so a read never sees part of a
 * segment: across all volumes the replica shows a prefix of the primary's history (a coalesced
 * batch lands whole).
 */
import type { FileVolume } from './file-volume';
import { VolumeError, VolumeErrorCode } from './errors';
import type { AllocationExtent, Volume } from './volume';

/** Readers share; the applier is exclusive. Writers (the applier) are not starved by readers. */
export class ApplyGate {
  private readers = 0;
  private writer?: Promise<void>;
  private readersDone?: () => void;

  async read<T>(fn: () => Promise<T>): Promise<T> {
    while (this.writer) await this.writer;
    this.readers++;
    try {
      return await fn();
    } finally {
      if (--this.readers === 0) this.readersDone?.();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.writer) await this.writer;
    let release!: () => void;
    this.writer = new Promise<void>((r) => (release = r));
    try {
      if (this.readers > 0) await new Promise<void>((r) => (this.readersDone = r));
      this.readersDone = undefined;
      return await fn();
    } finally {
      this.writer = undefined;
      release();
    }
  }
}

export class ReplicaVolume implements Volume {
  readonly name: string;
  readonly blockSize: number;
  readonly uuid: Buffer;
  readonly thin: boolean;
  /** Writable only after promotion (the image underneath is always writable for the applier). */
  readOnly = true;

  constructor(readonly image: FileVolume, private readonly gate: ApplyGate) {
    this.name = image.name;
    this.blockSize = image.blockSize;
    this.uuid = image.uuid;
    this.thin = image.thin;
  }

  /** The image's size: it grows online (FileVolume.grow). */
  get sizeBytes(): number {
    return this.image.sizeBytes;
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.gate.read(() => this.image.read(offsetBytes, lengthBytes));
  }

  private refuse(): Promise<never> {
    return Promise.reject(new VolumeError(VolumeErrorCode.ReadOnly, `volume '${this.name}' is a replica: read-only`));
  }

  write(): Promise<void> {
    return this.refuse();
  }

  writeSame(): Promise<void> {
    return this.refuse();
  }

  unmap(): Promise<void> {
    return this.refuse();
  }

  async flush(): Promise<void> {
    await this.image.flush();
  }

  allocation(offsetBytes: number, lengthBytes: number): Promise<AllocationExtent[]> {
    return this.gate.read(() => this.image.allocation(offsetBytes, lengthBytes));
  }

  async close(): Promise<void> {
    await this.image.close();
  }
}
