/**
 * The journaled volume: every state-changing call becomes a journal record before it reaches
 * the image, and overlapping writes reach the image in journal order. FUA and flush return
 * only once everything before them is durable (journal synced, image fsynced). The keeper
 * checkpoints images and trims the journal in the background; `recover` replays the journal
 * tail onto the images after a crash, before anything is served.
 */
import { releaseBuffer } from '../common/buffer-pool';
import type { Logger } from '../common/logger';
import { ImageFileTarget, type Journal, type JournalRecord, type RecordTarget } from '../journal/wal';
import { VolumeError, VolumeErrorCode } from './errors';
import type { FileVolume } from './file-volume';
import type { AllocationExtent, Volume, WriteOptions } from './volume';
import type { WriteIntentMap } from './write-intent';

/**
 * Sequence numbers appended but not yet in their image, across every volume of the journal.
 * `begin` is called in increasing sequence order; `end` in any order. A finished record is marked
 * by negating its entry (sequence numbers are positive): no set to grow and shrink per write.
 */
export class ImageTracker {
  private inflight: number[] = [];
  private head = 0;

  begin(seq: number): void {
    this.inflight.push(seq);
  }

  end(seq: number): void {
    const q = this.inflight;
    // Usually the oldest or close to it: search from the head (the entries are sorted by magnitude).
    let lo = this.head;
    let hi = q.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = Math.abs(q[mid]);
      if (v === seq) {
        q[mid] = -seq;
        break;
      }
      if (v < seq) lo = mid + 1;
      else hi = mid - 1;
    }
    while (this.head < q.length && q[this.head] < 0) this.head++;
    if (this.head === q.length) {
      q.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > q.length) {
      this.inflight = q.slice(this.head);
      this.head = 0;
    }
  }

  /** Every record ≤ the result is in its image (given the journal head). */
  safeSeq(journalHead: number): number {
    return this.head < this.inflight.length ? this.inflight[this.head] - 1 : journalHead;
  }
}

/**
 * A write appended to the journal and not yet in its image (waiting for its record, for the
 * overlapping writes before it, or for its image write). Registered at append, before any await:
 * a later overlapping write must see it even while it still waits for an earlier one, or the
 * later write could reach the image first (C, then A over C, then B over A only: B would not
 * wait for A). Nothing is allocated for whoever waits until someone does.
 */
interface Inflight {
  start: number;
  end: number;
  /** Resolves once the write is in its image or failed; made only when a later write (or close) waits. */
  landed?: Promise<void>;
  wake?: () => void;
}

/** Resolves when the write has landed (or failed): never rejects. */
function landed(w: Inflight): Promise<void> {
  return (w.landed ??= new Promise<void>((resolve) => (w.wake = resolve)));
}

export class JournaledVolume implements Volume {
  readonly name: string;
  readonly blockSize: number;
  readonly uuid: Buffer;
  readonly thin: boolean;
  /** Writes appended and not yet in their image, in no order (removal swaps the last entry in). */
  private inflight: Inflight[] = [];
  /** Sequence number of the last record appended for this volume. */
  lastSeq = 0;

  /** Extra delay before acknowledging a write (the RPO controller's throttle), ms; 0 most of the time. */
  ackDelay?: () => number;

  /** Removed (offsite remove-volume): no write is taken any more. */
  retired = false;

  /**
   * The regions a power cut could leave different from the journal (write-intent.ts): marked,
   * durably, before a write reaches the image; unmarked by the keeper's checkpoints.
   */
  intent?: WriteIntentMap;

  /** Split-brain protection: when set, a write is accepted only while this says yes (asked at every write). */
  writeGate?: () => boolean;

  logger?: Logger;

  /**
   * Records appended whose image write failed (EIO, ENOSPC of a thin image...), by sequence
   * number. The record is in the journal: the replica and `offsite replay` get it, and the image
   * must too, in journal order. Until it does, the tracker keeps the safe sequence below the
   * first of them (no checkpoint passes it, so a restart's recovery replays them), writes in
   * flight are added here instead of reaching the image out of order, new writes are refused
   * before they are journaled, and `retryImage` (every IMAGE_RETRY_MS) applies them from the
   * journal, oldest first. Reads go on: a failed write leaves its blocks undetermined (SBC).
   */
  private behind?: { seqs: number[]; since: Date; reason: string; code: string; timer?: NodeJS.Timeout; retrying?: Promise<void> };

  /** Writes refused now because this site may not be the primary. */
  get fenced(): boolean {
    return this.writeGate !== undefined && !this.writeGate();
  }

  get readOnly(): boolean {
    return this.image.readOnly || this.fenced;
  }

  constructor(readonly image: FileVolume, private readonly journal: Journal, private readonly tracker: ImageTracker) {
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
    return this.image.read(offsetBytes, lengthBytes);
  }

  write(offsetBytes: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.change('write', offsetBytes, data.length, data, opts?.fua ?? false, () => this.image.writeCombined(offsetBytes, data));
  }

  writeSame(offsetBytes: number, lengthBytes: number, pattern: Buffer, opts?: WriteOptions): Promise<void> {
    return this.change('writeSame', offsetBytes, lengthBytes, pattern, opts?.fua ?? false, () => this.image.writeSame(offsetBytes, lengthBytes, pattern));
  }

  unmap(offsetBytes: number, lengthBytes: number, opts?: WriteOptions): Promise<void> {
    return this.change('unmap', offsetBytes, lengthBytes, EMPTY, opts?.fua ?? false, () => this.image.unmap(offsetBytes, lengthBytes));
  }

  private async change(op: JournalRecord['op'], offset: number, length: number, data: Buffer, fua: boolean, applyToImage: () => Promise<void>): Promise<void> {
    if (this.fenced) throw new VolumeError(VolumeErrorCode.ReadOnly, `volume '${this.name}' is fenced: this site may not accept writes now`);
    if (this.retired) throw new VolumeError(VolumeErrorCode.Removed, `volume '${this.name}' was removed`);
    if (this.behind) throw new VolumeError(this.behind.code, `volume '${this.name}': journaled writes have not reached its image since ${this.behind.since.toISOString()} (${this.behind.reason}); new writes are refused until they do (retried every ${IMAGE_RETRY_MS / 1000} s)`);
    if (this.image.readOnly) return this.image.write(offset, data); // the image refuses with its own error
    const { seq, done } = this.journal.append(this.name, op, offset, length, data, fua);
    if (seq === 0) return done.catch((e: unknown) => Promise.reject(asVolumeError(e)));
    this.lastSeq = seq;
    this.tracker.begin(seq);
    // Synchronously with the append, so that inflight holds exactly the writes appended before
    // this one: the overlapping ones are waited for, and later ones see this one (see Inflight).
    // The common case, nothing overlapping, allocates nothing more than the entry.
    const end = offset + length;
    let before: Promise<void>[] | undefined;
    for (const w of this.inflight) if (w.start < end && offset < w.end) (before ??= []).push(landed(w));
    const entry: Inflight = { start: offset, end };
    this.inflight.push(entry);
    let appended = false;
    let lacking = false;
    try {
      await done;
      appended = true;
      if (before) await (before.length === 1 ? before[0] : Promise.all(before));
      // An earlier write failed its image write: this one waits its turn in the retries.
      if (this.imageBehindRecords > 0) throw new VolumeError(VolumeErrorCode.Io, `an earlier journaled write has not reached the image of volume '${this.name}' yet`);
      const marking = this.intent?.mark(offset, length, seq);
      if (marking) await marking;
      await applyToImage();
    } catch (e) {
      if (!appended) throw asVolumeError(e);
      this.imageBehind(seq, e);
      lacking = true;
      // Journaled, so the replica and a recovery apply it: the blocks are undetermined until the
      // retry lands (as after any failed write, SBC). A full disk keeps its own sense (SPACE
      // ALLOCATION FAILED), anything else is a write error.
      throw new VolumeError(this.imageBehindCode(), `volume '${this.name}': write journaled as record ${seq} but not in the image yet (${(e as Error).message}); retried every ${IMAGE_RETRY_MS / 1000} s`);
    } finally {
      // Also when the append failed: the writes waiting on this one go on.
      const i = this.inflight.indexOf(entry);
      const last = this.inflight.pop()!;
      if (last !== entry) this.inflight[i] = last;
      entry.wake?.();
      // A record the image lacks keeps the safe sequence below it (see `behind`).
      if (!lacking) this.tracker.end(seq);
    }
    const delay = this.ackDelay?.() ?? 0;
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    // Asked again before the acknowledgement: a site that lost its lease while the write was in
    // flight (a stalled disk, a paused process) may have been taken over; acknowledging now would
    // make two sites acknowledge writes. The write is journaled, so its blocks are undetermined.
    if (this.fenced) throw new VolumeError(VolumeErrorCode.ReadOnly, `volume '${this.name}' was fenced while the write was in flight: not acknowledged (this site may not accept writes now)`);
  }

  /** Journaled records whose image write failed and waits for a retry (0 most of the time). */
  get imageBehindRecords(): number {
    return this.behind?.seqs.length ?? 0;
  }

  /** The error a write gets while the image lacks journaled records (a full disk keeps its own). */
  private imageBehindCode(): string {
    return this.behind?.code ?? VolumeErrorCode.Io;
  }

  /** The record `seq` is journaled and not in the image (why: `e`): see `behind`. */
  private imageBehind(seq: number, e: unknown): void {
    if (!this.behind) {
      const reason = (e as Error)?.message ?? String(e);
      const code = (e as { code?: string })?.code === VolumeErrorCode.NoSpace ? VolumeErrorCode.NoSpace : VolumeErrorCode.Io;
      this.behind = { seqs: [], since: new Date(), reason, code };
      this.behind.timer = setInterval(() => void this.retryImage(), IMAGE_RETRY_MS);
      this.behind.timer.unref();
      this.logger?.error({ volume: this.name, seq, err: e }, 'a journaled write could not reach the volume image: writes to this volume are refused until it does (retried from the journal); the replica and a recovery have it');
    }
    this.behind.seqs.push(seq);
  }

  /**
   * Apply the records the image lacks from the journal, oldest first; once all are in, writes
   * are taken again. A failure leaves the rest for the next try. Resolves when this try ends.
   */
  retryImage(): Promise<void> {
    const b = this.behind;
    if (!b) return Promise.resolve();
    b.retrying ??= (async () => {
      while (b.seqs.length) {
        let first = 0;
        for (let i = 1; i < b.seqs.length; i++) if (b.seqs[i] < b.seqs[first]) first = i;
        const seq = b.seqs[first];
        let found = false;
        for await (const rec of this.journal.records(seq - 1, seq, this.name)) {
          found = true;
          try {
            await this.intent?.mark(rec.offsetBytes, rec.lengthBytes, seq);
            await applyToVolume(this.image, rec);
          } finally {
            releaseBuffer(rec.data);
          }
        }
        if (!found) throw new Error(`journal record ${seq} of volume '${this.name}' is not in the journal`);
        b.seqs.splice(first, 1);
        this.tracker.end(seq);
      }
      clearInterval(b.timer);
      this.behind = undefined;
      this.logger?.warn({ volume: this.name, since: b.since.toISOString() }, 'journaled writes that had failed to reach the volume image are in it now: writes are taken again');
    })()
      .catch((e: unknown) => {
        const reason = (e as Error)?.message ?? String(e);
        // Once per new reason, not every second of a long outage.
        if (reason !== b.reason) this.logger?.warn({ volume: this.name, err: e, records: b.seqs.length }, 'volume image still refuses the journaled writes it lacks; retrying');
        b.reason = reason;
      })
      .finally(() => (b.retrying = undefined));
    return b.retrying;
  }

  /**
   * Once retired: resolves when every write taken before reached the journal and the image (or
   * failed), with the highest sequence number any of them has.
   */
  async settled(): Promise<number> {
    while (this.tracker.safeSeq(this.journal.headSeq()) < this.lastSeq) await new Promise((r) => setTimeout(r, 5));
    return this.lastSeq;
  }

  async flush(): Promise<void> {
    await this.journal.sync();
    await this.image.flush();
  }

  allocation(offsetBytes: number, lengthBytes: number): Promise<AllocationExtent[]> {
    return this.image.allocation(offsetBytes, lengthBytes);
  }

  /** Bytes in the regions the write-intent map has marked (0 without a map). */
  get writeIntentBytes(): number {
    let n = 0;
    for (const r of this.intent?.markedRanges(this.sizeBytes) ?? []) n += r.lengthBytes;
    return n;
  }

  /** The keeper's checkpoint made every record ≤ seq durable in the journal and the images. */
  checkpointed(seq: number): void {
    this.intent?.checkpointed(seq);
  }

  async close(): Promise<void> {
    await Promise.all(this.inflight.map(landed));
    // What the image still lacks stays in the journal (the checkpoint is below it): the next start replays it.
    if (this.behind) clearInterval(this.behind.timer);
    await this.image.flush();
    await this.image.close();
    await this.intent?.close();
  }
}

const EMPTY = Buffer.alloc(0);
/** How often a volume whose image refused journaled writes tries them again. */
const IMAGE_RETRY_MS = 1000;

/** A journal that cannot take the record is, to the initiator, a volume without space. */
function asVolumeError(e: unknown): unknown {
  if ((e as { code?: string })?.code === 'JOURNAL_NO_SPACE') return new VolumeError(VolumeErrorCode.NoSpace, (e as Error).message);
  return e;
}

/** Apply a record to a live image volume (recovery, replica apply). */
export async function applyToVolume(v: Volume, rec: JournalRecord): Promise<void> {
  if (rec.op === 'write') await v.write(rec.offsetBytes, rec.data);
  else if (rec.op === 'writeSame') await v.writeSame(rec.offsetBytes, rec.lengthBytes, rec.data);
  else await v.unmap(rec.offsetBytes, rec.lengthBytes);
}

/**
 * Records onto their images, in order (the replica's apply). A run of writes to one volume,
 * each starting where the one before ended, reaches the image as one pwritev
 * (FileVolume.writeCombined): a segment of sequential 4K writes was one pwrite per record.
 * `before` runs for each record ahead of its run's write (a test copy keeps its view).
 */
export async function applyInOrder(records: readonly JournalRecord[], imageOf: (r: JournalRecord) => FileVolume, before?: (r: JournalRecord) => Promise<void>): Promise<void> {
  for (let i = 0; i < records.length; ) {
    const r = records[i];
    const image = imageOf(r);
    let j = i + 1;
    if (r.op === 'write') {
      for (let end = r.offsetBytes + r.data.length; j < records.length; j++) {
        const n = records[j];
        if (n.op !== 'write' || n.volume !== r.volume || n.offsetBytes !== end) break;
        end += n.data.length;
      }
    }
    if (before) for (let k = i; k < j; k++) await before(records[k]);
    if (j - i === 1) await applyToVolume(image, r);
    else {
      // Back to back, so none overlaps another: issued together, they land as one write.
      const writes: Promise<void>[] = [];
      for (let k = i; k < j; k++) writes.push(image.writeCombined(records[k].offsetBytes, records[k].data));
      await Promise.all(writes);
    }
    i = j;
  }
}

export interface RecoveryReport {
  fromSeq: number;
  toSeq: number;
  records: number;
  bytes: number;
  /**
   * The first record not applied, of a volume neither given nor removed (left out of the
   * configuration, or configured read-only): the checkpoint stays before it, and the journal
   * must keep it and everything after it (KeeperOptions.keepFrom) until a start that serves the
   * volume replays them. Undefined when every record reached its image.
   */
  unappliedFromSeq?: number;
  /** The volumes whose records were not applied (as above). */
  unappliedVolumes?: string[];
}

/**
 * After a crash: replay every record past the checkpoint onto its image (idempotent), fsync,
 * and move the checkpoint to the head, or to just before the first record left unapplied.
 * Records of a volume not in `images` are skipped; unless the volume was removed (`removed`:
 * its records all reached its image before it was set aside), they are not in its image, and
 * a checkpoint past them would let the keeper trim them: the volume, served again, would miss
 * acknowledged writes. Held there, the next start's recovery replays them.
 */
export async function recoverImages(journal: Journal, images: ReadonlyMap<string, FileVolume>, logger?: Logger, removed: ReadonlySet<string> = new Set()): Promise<RecoveryReport> {
  // Records trimmed while only in the images' page cache are past the checkpoint, not in the
  // journal: a crash of the process left them in the images.
  const from = Math.max(journal.checkpointSeq(), journal.oldestSeq() - 1);
  const to = journal.headSeq();
  const { records, bytes, skipped } = await replayOnto(journal, images, from, to, logger);
  let unappliedFromSeq: number | undefined;
  const unappliedVolumes: string[] = [];
  for (const [volume, s] of skipped) {
    if (removed.has(volume)) continue;
    unappliedVolumes.push(volume);
    if (unappliedFromSeq === undefined || s.firstSeq < unappliedFromSeq) unappliedFromSeq = s.firstSeq;
  }
  await journal.checkpoint(unappliedFromSeq === undefined ? to : unappliedFromSeq - 1);
  if (unappliedFromSeq !== undefined) {
    logger?.warn(
      { volumes: unappliedVolumes, unappliedFromSeq },
      'journal records of volumes not served writable are not in their images: the journal keeps them (and every record after them) until a start that serves those volumes writable applies them; it cannot be trimmed meanwhile',
    );
  }
  return { fromSeq: from + 1, toSeq: to, records, bytes, unappliedFromSeq, unappliedVolumes: unappliedFromSeq === undefined ? undefined : unappliedVolumes };
}

/**
 * Apply the journal's records in (afterSeq, toSeq] onto their images (idempotent), then flush
 * the images. Records of volumes not in `images` are skipped: `skipped` counts them per volume,
 * with the first one's sequence.
 */
export async function replayOnto(journal: Journal, images: ReadonlyMap<string, FileVolume>, afterSeq: number, toSeq: number, logger?: Logger): Promise<{ records: number; bytes: number; skipped: Map<string, { records: number; firstSeq: number }> }> {
  let records = 0;
  let bytes = 0;
  const skipped = new Map<string, { records: number; firstSeq: number }>();
  for await (const rec of journal.records(afterSeq, toSeq)) {
    const img = images.get(rec.volume);
    if (!img) {
      const s = skipped.get(rec.volume);
      if (s) s.records++;
      else skipped.set(rec.volume, { records: 1, firstSeq: rec.seq });
      continue;
    }
    await applyToVolume(img, rec);
    records++;
    bytes += rec.lengthBytes;
  }
  for (const [volume, s] of skipped) logger?.warn({ volume, records: s.records, firstSeq: s.firstSeq }, 'journal records for a volume that is not served (removed, or left out of the configuration): kept, not applied');
  for (const img of images.values()) await img.flush();
  return { records, bytes, skipped };
}

/** What the keeper needs of a volume: its name, size and image. */
export interface KeptVolume {
  readonly name: string;
  readonly sizeBytes: number;
  readonly image: { flush(): Promise<void> };
  /** Told after each checkpoint, with its sequence number. */
  checkpointed?(seq: number): void;
}

export interface KeeperOptions {
  /** Upkeep runs this often (ms). */
  intervalMs?: number;
  /** Trimming waits while this says no (a demoted site keeps its records until its lineage is checked). */
  canTrim?: () => boolean;
  /**
   * Trim records once they are in the images' page cache (Journal.inImages), and checkpoint
   * (fsync the images) only when an FUA record waits for it, every CHECKPOINT_EVERY_MS, and
   * at stop. For a primary, whose writers flush what they need durable; not for a replica,
   * whose acknowledgements promise the primary durability of everything before them.
   */
  trimUnsynced?: boolean;
  /**
   * The size of a volume that has records in the journal but is not kept here any more (removed):
   * its records are folded into its history base like any other's when they leave the window.
   */
  sizeOf?: (volume: string) => Promise<number | undefined>;
  /**
   * Records from this sequence on are not all in their images (RecoveryReport.unappliedFromSeq:
   * a volume not served writable): never checkpointed, trimmed or folded past, whatever the
   * images of the served volumes hold.
   */
  keepFrom?: number;
}

/**
 * With trimUnsynced, the images are still fsynced this often: what a power loss can take back
 * stays bounded, as the kernel's own writeback (30 s) bounds it for a plain file.
 */
const CHECKPOINT_EVERY_MS = 30_000;

/**
 * Background upkeep: checkpoint (fsync images, record the safe sequence) and trim the journal
 * (feeding history into the base images), every `intervalMs` and on demand.
 */
export class JournalKeeper {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private lastCheckpointMs = performance.now();

  constructor(
    private readonly journal: Journal,
    /** Every record ≤ this is in its image. */
    private readonly safeSeq: () => number,
    private readonly volumes: () => Iterable<KeptVolume>,
    private readonly logger?: Logger,
    private readonly opts: KeeperOptions = {},
  ) {
    const upkeep = () => void this.tick().catch((e: unknown) => this.logger?.error({ err: e }, 'journal upkeep failed'));
    this.timer = setInterval(upkeep, opts.intervalMs ?? 1000);
    this.timer.unref();
    journal.onNewSegment = upkeep;
  }

  tick(): Promise<void> {
    this.running ??= this.run(false).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(final: boolean): Promise<void> {
    await this.journal.checkSpace();
    const safe = this.opts.keepFrom === undefined ? this.safeSeq() : Math.min(this.safeSeq(), this.opts.keepFrom - 1);
    if (this.opts.trimUnsynced) this.journal.inImages(safe);
    if (this.checkpointDue(safe, final)) {
      this.lastCheckpointMs = performance.now();
      await this.journal.sync();
      for (const v of this.volumes()) await v.image.flush();
      await this.journal.checkpoint(safe);
      const at = this.journal.checkpointSeq();
      for (const v of this.volumes()) v.checkpointed?.(at);
    }
    if (!(this.opts.canTrim?.() ?? true)) return;
    const sizes = new Map<string, number>();
    for (const v of this.volumes()) sizes.set(v.name, v.sizeBytes);
    const opened: ImageFileTarget[] = [];
    try {
      await this.journal.trim(async (volume): Promise<RecordTarget> => {
        const size = sizes.get(volume) ?? (await this.opts.sizeOf?.(volume));
        if (size === undefined) throw new Error(`no size for volume ${volume} (not served here: removed, or left out of the configuration?)`);
        const t = await ImageFileTarget.open(this.journal.baseImagePath(volume), size, true);
        opened.push(t);
        return t;
      });
    } finally {
      for (const t of opened) await t.close();
    }
  }

  private checkpointDue(safe: number, final: boolean): boolean {
    const cp = this.journal.checkpointSeq();
    if (safe <= cp) return false;
    if (!this.opts.trimUnsynced || final) return true;
    return this.journal.lastFuaSeq() > cp || performance.now() - this.lastCheckpointMs >= CHECKPOINT_EVERY_MS;
  }

  /** The last upkeep, with a checkpoint of everything in the images. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.journal.onNewSegment = undefined;
    if (this.running) await this.running.catch(() => undefined);
    await this.run(true);
  }
}
