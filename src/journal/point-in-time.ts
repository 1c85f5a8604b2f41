/**
 * Point-in-time reconstruction: a volume's image as it was right after sequence N, from the
 * retained base (or, for the latest state, the live image) plus the retained records.
 */
import { copyFile, open, stat } from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import { JournalError, JournalErrorCode } from './wal-errors';
import { applyRecord, seqAtTime, type Journal } from './wal';

export interface ReconstructOptions {
  journal: Journal;
  volume: string;
  sizeBytes: number;
  /** The live image file (used for the latest state). */
  imagePath: string;
  out: string;
  seq: number;
  onProgress?: (done: number, total: number) => void;
}

export interface ReconstructReport {
  seq: number;
  timeMs?: number;
  records: number;
  bytes: number;
  from: 'image' | 'base' | 'empty';
}

export function describeWindow(journal: Journal): string {
  const w = journal.window();
  const t = (ms?: number) => (ms ? new Date(ms).toISOString() : '?');
  if (w.fromSeq === w.toSeq) {
    // History on, every record folded (none written within the window): the base is the latest state.
    if (journal.keepsHistory && journal.baseInfo()) return `only the latest state is retained (sequence ${w.toSeq}, ${t(w.toTimeMs)}): every record was folded into the base, none was written within --journal-retain`;
    const why = journal.keepsHistory && journal.awaitsBase ? 'history restarts when the appliance next starts (it had no base for its records)' : 'configure --journal-retain to keep history';
    return `only the latest state is retained (sequence ${w.toSeq}, ${t(w.toTimeMs)}); ${why}`;
  }
  return `sequences ${w.fromSeq}..${w.toSeq} (${t(w.fromTimeMs)} .. ${t(w.toTimeMs)})`;
}

/**
 * Refuse a point inside a batch a replica received coalesced: its records are only the newest
 * version of each block, so the points before its end are states the primary never had.
 */
export async function checkReplayable(j: Journal, seq: number): Promise<void> {
  const around = await j.coalescedAround(seq);
  if (around) {
    throw new JournalError(
      JournalErrorCode.CoalescedPoint,
      `sequence ${seq} lies inside a batch this replica received coalesced (only the newest version of each block it overwrote): sequences ${around.from}..${around.to - 1} are states the primary never had; the nearest points are ${around.from - 1} and ${around.to}`,
    );
  }
}

/** A point replay (or a test copy) can give: inside the retained window, not inside a coalesced batch. */
export async function checkPoint(j: Journal, seq: number): Promise<void> {
  const w = j.window();
  if (seq < w.fromSeq || seq > w.toSeq) {
    throw new JournalError(JournalErrorCode.OutsideWindow, `sequence ${seq} is outside the retained window: ${describeWindow(j)}`);
  }
  await checkReplayable(j, seq);
}

/**
 * The point for a moment: right after the last write at or before it (moved back out of a
 * coalesced batch), and at least the window's start; a moment outside the window is refused.
 */
export async function pointAtTime(j: Journal, timeMs: number): Promise<number> {
  const w = j.window();
  if ((w.fromTimeMs !== undefined && timeMs < w.fromTimeMs && w.fromSeq > 0) || w.toTimeMs === undefined) {
    throw new JournalError(JournalErrorCode.OutsideWindow, `time ${new Date(timeMs).toISOString()} is outside the retained window: ${describeWindow(j)}`);
  }
  return Math.max(await seqAtTime(j, timeMs), w.fromSeq);
}

/**
 * The point an operator asked for (`seq`, or the point at `timeMs`), checked as checkPoint
 * does, with the primary's time of it (the base's, when the point is the base).
 */
export async function resolvePoint(j: Journal, at: { seq?: number; timeMs?: number }): Promise<{ seq: number; timeMs?: number }> {
  const seq = at.seq ?? (await pointAtTime(j, at.timeMs!));
  await checkPoint(j, seq);
  const base = j.baseInfo();
  return { seq, timeMs: j.timeOf(seq) ?? (base?.seq === seq && base.timeMs ? base.timeMs : undefined) };
}

export async function reconstruct(o: ReconstructOptions): Promise<ReconstructReport> {
  const j = o.journal;
  await checkPoint(j, o.seq);
  let from: ReconstructReport['from'];
  let after: number;
  if (o.seq === j.headSeq()) {
    // Latest: the image holds everything up to its checkpoint (and maybe more: replay is idempotent).
    await copyFile(o.imagePath, o.out, fsc.COPYFILE_FICLONE);
    from = 'image';
    after = j.checkpointSeq();
  } else {
    const base = j.baseInfo()!;
    const basePath = j.baseImagePath(o.volume);
    const hasBase = j.hasStoredBase && (await stat(basePath).catch(() => undefined)) !== undefined;
    if (hasBase) {
      await copyFile(basePath, o.out, fsc.COPYFILE_FICLONE);
      from = 'base';
    } else {
      const fh = await open(o.out, 'w');
      await fh.close();
      from = 'empty';
    }
    after = base.seq;
  }
  const fh = await open(o.out, 'r+');
  try {
    await fh.truncate(o.sizeBytes);
    const total = Math.max(0, o.seq - after);
    let records = 0;
    let bytes = 0;
    let seen = 0;
    for await (const rec of j.records(after, o.seq, o.volume)) {
      seen = rec.seq - after;
      await applyRecord(fh, rec);
      records++;
      bytes += rec.lengthBytes;
      if (records % 256 === 0) o.onProgress?.(seen, total);
    }
    o.onProgress?.(total, total);
    await fh.datasync();
    return { seq: o.seq, timeMs: j.timeOf(o.seq), records, bytes, from };
  } finally {
    await fh.close();
  }
}
