/**
 * A volume as it was at another point of its retained history, block by block: the blocks that
 * any record between that point and the one the image holds now changed get their content at
 * the point — the point-in-time base's, then the records after the base up to the point. Every
 * other block is the same at both points. Used by a test copy made at an earlier point (into
 * its overlay) and by a promotion at an earlier point (into the image itself).
 */
import { promises as fsp } from 'node:fs';
import { releaseBuffer } from '../common/buffer-pool';
import { applyRecordPart, type Journal, type JournalRecord } from '../journal/wal';

export interface RewindReport {
  /** One bit per block: changed between the two points (now holding its content at `seq`). */
  changed: Uint8Array;
  blocks: number;
  records: number;
}

/**
 * Write, through `write`, the content at `seq` of every block of `volume` changed between `seq`
 * and `nowSeq` (either may be the later one). The caller keeps the history still (no trim:
 * Journal.holdHistory) and has checked that `seq` is a replayable point of the window.
 */
export async function writeChangedBlocksAsOf(
  journal: Journal,
  volume: string,
  geometry: { blockSize: number; sizeBytes: number },
  seq: number,
  nowSeq: number,
  write: (offsetBytes: number, data: Buffer) => Promise<void>,
): Promise<RewindReport> {
  const bs = geometry.blockSize;
  const blocks = geometry.sizeBytes / bs;
  const changed = new Uint8Array(Math.ceil(blocks / 8));
  const isChanged = (b: number) => (changed[b >> 3] & (1 << (b & 7))) !== 0;
  const inRange = (r: JournalRecord): [number, number] => [Math.floor(r.offsetBytes / bs), Math.min(Math.ceil((r.offsetBytes + r.lengthBytes) / bs), blocks)];
  if (seq !== nowSeq) {
    for await (const r of journal.records(Math.min(seq, nowSeq), Math.max(seq, nowSeq), volume)) {
      const [b0, b1] = inRange(r);
      for (let b = b0; b < b1; b++) changed[b >> 3] |= 1 << (b & 7);
      releaseBuffer(r.data);
    }
  }
  // The base's content of those blocks (none, or none of this volume: it was empty then).
  const base = journal.baseInfo();
  const baseFile = base && journal.hasStoredBase ? await fsp.open(journal.baseImagePath(volume), 'r').catch(() => undefined) : undefined;
  let count = 0;
  try {
    const chunk = Buffer.alloc(Math.min(1 << 20, geometry.sizeBytes));
    let b = 0;
    while (b < blocks) {
      if (changed[b >> 3] === 0) {
        b = (b | 7) + 1;
        continue;
      }
      if (!isChanged(b)) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < blocks && (e - b) * bs < chunk.length && isChanged(e)) e++;
      const len = (e - b) * bs;
      const buf = chunk.subarray(0, len).fill(0);
      if (baseFile) await baseFile.read(buf, 0, len, b * bs);
      await write(b * bs, buf);
      count += e - b;
      b = e;
    }
  } finally {
    await baseFile?.close();
  }
  // Then the records after the base up to the point, where they touch those blocks.
  let records = 0;
  if (count > 0) {
    for await (const r of journal.records(base?.seq ?? 0, seq, volume)) {
      const [b0, b1] = inRange(r);
      for (let b = b0; b < b1; b++) {
        if (!isChanged(b)) continue;
        let e = b + 1;
        while (e < b1 && isChanged(e)) e++;
        await applyRecordPart(r, b * bs, (e - b) * bs, write);
        b = e;
      }
      records++;
      releaseBuffer(r.data);
    }
  }
  return { changed, blocks: count, records };
}
