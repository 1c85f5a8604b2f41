/**
 * A writable, throw-away snapshot of a replica volume for failover tests: it shows the replica
 * as it was when the test started (or at an earlier point of its retained history, see
 * rewind), plus whatever the test writes — while replication keeps updating the replica
 * underneath. Copy-on-write both ways into a sparse overlay file: the test's writes go to the
 * overlay, and before the applier changes a block of the replica that the overlay does not
 * hold yet, the block's old content is copied there first.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Journal } from '../journal/wal';
import { writeChangedBlocksAsOf } from './rewind';
import type { FileVolume } from './file-volume';
import type { ApplyGate } from './replica';
import type { AllocationExtent, Volume } from './volume';

export class TestCopyVolume implements Volume {
  readonly name: string;
  readonly blockSize: number;
  readonly sizeBytes: number;
  readonly uuid: Buffer;
  readonly thin = false;
  readonly readOnly = false;
  /** One bit per block: the overlay holds this block. */
  private readonly present: Uint8Array;
  private closed = false;

  private constructor(private readonly base: FileVolume, private readonly gate: ApplyGate, private readonly overlay: FileHandle, readonly overlayPath: string, uuid: Buffer) {
    this.name = `${base.name}-test`;
    this.blockSize = base.blockSize;
    this.sizeBytes = base.sizeBytes;
    this.uuid = uuid;
    this.present = new Uint8Array(Math.ceil(base.sizeBytes / base.blockSize / 8));
  }

  static async create(base: FileVolume, gate: ApplyGate, overlayPath: string): Promise<TestCopyVolume> {
    const fh = await fsp.open(overlayPath, 'w+', 0o600);
    await fh.truncate(base.sizeBytes);
    // A distinct identity, so initiators never mistake the copy for the replica volume.
    const uuid = Buffer.from(base.uuid);
    uuid[0] ^= 0xff;
    return new TestCopyVolume(base, gate, fh, overlayPath, uuid);
  }

  private has(block: number): boolean {
    return (this.present[block >> 3] & (1 << (block & 7))) !== 0;
  }

  private mark(block: number): void {
    this.present[block >> 3] |= 1 << (block & 7);
  }

  /** Under the apply gate: the applier preserves blocks and changes the replica only between reads. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.gate.read(() => this.readNow(offsetBytes, lengthBytes));
  }

  private async readNow(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const out = Buffer.alloc(lengthBytes);
    const bs = this.blockSize;
    let b = offsetBytes / bs;
    const end = (offsetBytes + lengthBytes) / bs;
    while (b < end) {
      const inOverlay = this.has(b);
      let e = b + 1;
      while (e < end && this.has(e) === inOverlay) e++;
      const pos = (b - offsetBytes / bs) * bs;
      const len = (e - b) * bs;
      if (inOverlay) await this.overlay.read(out, pos, len, b * bs);
      else (await this.base.read(b * bs, len)).copy(out, pos);
      b = e;
    }
    return out;
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    await this.overlay.write(data, 0, data.length, offsetBytes);
    for (let b = offsetBytes / this.blockSize; b < (offsetBytes + data.length) / this.blockSize; b++) this.mark(b);
  }

  async writeSame(offsetBytes: number, lengthBytes: number, pattern: Buffer): Promise<void> {
    const buf = Buffer.alloc(lengthBytes);
    for (let o = 0; o < lengthBytes; o += pattern.length) pattern.copy(buf, o);
    await this.write(offsetBytes, buf);
  }

  async unmap(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.write(offsetBytes, Buffer.alloc(lengthBytes));
  }

  /**
   * Show the volume as it was right after sequence `seq` instead of `nowSeq` (what the image
   * holds now; `seq` may lie on either side of it): every block a record between the two
   * changed gets its content at `seq` in the overlay, which keeps it (see rewind.ts). On a new
   * copy; the caller holds the apply gate and the journal's history, and has checked `seq`.
   */
  async rewind(journal: Journal, seq: number, nowSeq: number): Promise<{ blocks: number; records: number }> {
    const r = await writeChangedBlocksAsOf(journal, this.base.name, this, seq, nowSeq, async (offsetBytes, data) => {
      await this.overlay.write(data, 0, data.length, offsetBytes);
    });
    for (let i = 0; i < r.changed.length; i++) this.present[i] |= r.changed[i];
    return { blocks: r.blocks, records: r.records };
  }

  /** The applier is about to change this range of the replica: keep the snapshot's view of it. */
  async preserve(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.closed) return;
    const bs = this.blockSize;
    let b = Math.floor(offsetBytes / bs);
    // Past the copy's end (the volume grew after the copy was made) there is nothing to keep.
    const end = Math.min(Math.ceil((offsetBytes + lengthBytes) / bs), this.sizeBytes / bs);
    while (b < end) {
      if (this.has(b)) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < end && !this.has(e)) e++;
      const old = await this.base.read(b * bs, (e - b) * bs);
      await this.overlay.write(old, 0, old.length, b * bs);
      for (let i = b; i < e; i++) this.mark(i);
      b = e;
    }
  }

  async flush(): Promise<void> {
    // Throw-away by design: nothing to make durable.
  }

  async allocation(offsetBytes: number, lengthBytes: number): Promise<AllocationExtent[]> {
    return [{ offsetBytes, lengthBytes, mapped: true }];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.overlay.close();
    await fsp.unlink(this.overlayPath).catch(() => undefined);
  }
}
