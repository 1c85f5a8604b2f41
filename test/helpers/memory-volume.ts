import { randomBytes } from 'node:crypto';
import type { AllocationExtent, Volume, WriteOptions } from '../../src/volume/volume';

/** An in-memory Volume for layer tests of scsi/ (the real ones are tested against FileVolume). */
export class MemoryVolume implements Volume {
  readonly blockSize: number;
  readonly uuid = randomBytes(16);
  readonly thin = true;
  private readonly data: Buffer;
  flushes = 0;

  constructor(readonly name: string, readonly sizeBytes: number, readonly readOnly = false, blockSize = 512) {
    this.blockSize = blockSize;
    this.data = Buffer.alloc(sizeBytes);
  }
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offsetBytes, offsetBytes + lengthBytes));
  }
  async write(offsetBytes: number, data: Buffer, _opts?: WriteOptions): Promise<void> {
    data.copy(this.data, offsetBytes);
  }
  async writeSame(offsetBytes: number, lengthBytes: number, pattern: Buffer): Promise<void> {
    for (let o = 0; o < lengthBytes; o += pattern.length) pattern.copy(this.data, offsetBytes + o);
  }
  async unmap(offsetBytes: number, lengthBytes: number, _opts?: WriteOptions): Promise<void> {
    this.data.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }
  async flush(): Promise<void> {
    this.flushes++;
  }
  async allocation(offsetBytes: number, lengthBytes: number): Promise<AllocationExtent[]> {
    return [{ offsetBytes, lengthBytes, mapped: true }];
  }
  async close(): Promise<void> {}
}
