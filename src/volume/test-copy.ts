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
import { releaseBuffer } from '../common/buffer-pool';
import type { Journal, JournalRecord } from '../journal/wal';
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
   * changed gets its content at `seq` — the point-in-time base's, then the records after the
   * base up to `seq` — and the overlay keeps it. Every other block is the same at both points.
   * The caller holds the apply gate and the journal's history (no trim meanwhile), and has
   * checked that `seq` is a replayable point of the retained window.
   */
  async rewind(journal: Journal, seq: number, nowSeq: number): Promise<{ blocks: number; records: number }> {
    const bs = this.blockSize;
    const blocks = this.sizeBytes / bs;
    const touched = new Uint8Array(this.present.length);
    const volume = this.base.name;
    const inRange = (r: JournalRecord): [number, number] => [Math.floor(r.offsetBytes / bs), Math.min(Math.ceil((r.offsetBytes + r.lengthBytes) / bs), blocks)];
    for await (const r of journal.records(Math.min(seq, nowSeq), Math.max(seq, nowSeq), volume)) {
      const [b0, b1] = inRange(r);
      for (let b = b0; b < b1; b++) touched[b >> 3] |= 1 << (b & 7);
      releaseBuffer(r.data);
    }
    const isTouched = (b: number) => (touched[b >> 3] & (1 << (b & 7))) !== 0;
    // The base's content of the changed blocks (none, or none of this volume: it was empty then).
    const base = journal.baseInfo();
    const basePath = journal.baseImagePath(volume);
    const baseFile = base && base.seq > 0 ? await fsp.open(basePath, 'r').catch(() => undefined) : undefined;
    let count = 0;
    try {
      const chunk = Buffer.alloc(Math.min(1 << 20, this.sizeBytes));
      let b = 0;
      while (b < blocks) {
        if (touched[b >> 3] === 0) {
          b = (b | 7) + 1;
          continue;
        }
        if (!isTouched(b)) {
          b++;
          continue;
        }
        let e = b + 1;
        while (e < blocks && (e - b) * bs < chunk.length && isTouched(e)) e++;
        const len = (e - b) * bs;
        const buf = chunk.subarray(0, len).fill(0);
        if (baseFile) await baseFile.read(buf, 0, len, b * bs);
        await this.overlay.write(buf, 0, len, b * bs);
        for (let k = b; k < e; k++) this.mark(k);
        count += e - b;
        b = e;
      }
    } finally {
      await baseFile?.close();
    }
    // Then the records after the base up to the point, where they touch those blocks.
    let records = 0;
    for await (const r of journal.records(base?.seq ?? 0, seq, volume)) {
      const [b0, b1] = inRange(r);
      for (let b = b0; b < b1; b++) {
        if (!isTouched(b)) continue;
        let e = b + 1;
        while (e < b1 && isTouched(e)) e++;
        await this.overwriteWith(r, b * bs, (e - b) * bs);
        b = e;
      }
      records++;
      releaseBuffer(r.data);
    }
    return { blocks: count, records };
  }

  /** The part [offsetBytes, +lengthBytes) of a record, onto the overlay. */
  private async overwriteWith(r: JournalRecord, offsetBytes: number, lengthBytes: number): Promise<void> {
    if (r.op === 'write') {
      await this.overlay.write(r.data, offsetBytes - r.offsetBytes, lengthBytes, offsetBytes);
      return;
    }
    const fill = Buffer.alloc(Math.min(lengthBytes, 1 << 20));
    if (r.op === 'writeSame') for (let o = 0; o < fill.length; o += r.data.length) r.data.copy(fill, o);
    for (let o = 0; o < lengthBytes; o += fill.length) await this.overlay.write(fill, 0, Math.min(fill.length, lengthBytes - o), offsetBytes + o);
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
