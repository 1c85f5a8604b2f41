/**
 * The journal's cache of its newest records, data included (see Journal.readAfter). Pure
 * bookkeeping over pooled buffers: no I/O.
 */
import { releaseBuffer, retainBuffer } from '../common/buffer-pool';
import type { JournalRecord } from './wal';

/** What a cached record costs beside its data (the object and its fields). */
const RECORD_OVERHEAD = 256;

type Counted = ArrayBufferLike & Record<symbol, number | undefined>;

/**
 * The newest appended records, data included, in sequence order, for the shipper (readAfter):
 * while it keeps up it never goes back to the index and the segment files. Bounded by the
 * memory the data keeps alive: a small record is often a view into a larger network buffer
 * that other records share, so each backing buffer counts once, however many records use it.
 * Records leave from the old end, over the budget or once shipped (Journal.shipped; an
 * acknowledgement drops them too: an image sync covers records without shipping them).
 */
export class RecentRecords {
  private recs: JournalRecord[] = [];
  private first = 0;
  private bytes = 0;
  /**
   * The property, on a backing buffer, counting this cache's records that use it: cheaper than a
   * Map keyed by buffer, which grew and shrank through runtime calls on every replicated record.
   */
  private readonly uses = Symbol('offsite.cachedRecords');

  /** `budget`: memory held at most; records with more data than `maxRecordBytes` are not kept. */
  constructor(
    private readonly budget: number,
    private readonly maxRecordBytes = Infinity,
  ) {}

  get size(): number {
    return this.recs.length - this.first;
  }

  /** Memory held: each backing buffer once, plus a per-record overhead. */
  get heldBytes(): number {
    return this.bytes;
  }

  /**
   * Holds the record's (pooled) data until it leaves: one pool reference per backing buffer,
   * taken by its first record here and given back when its last one leaves. Sequence numbers
   * increase. A record too big to keep leaves a gap: readers go to the segments from there.
   */
  add(rec: JournalRecord): void {
    if (rec.data.length > this.maxRecordBytes) return;
    if (rec.data.length) {
      const ab = rec.data.buffer as Counted;
      const n = ab[this.uses] ?? 0;
      ab[this.uses] = n + 1;
      if (n === 0) {
        retainBuffer(rec.data);
        this.bytes += ab.byteLength;
      }
    }
    this.bytes += RECORD_OVERHEAD;
    this.recs.push(rec);
    while (this.bytes > this.budget && this.size > 1) this.dropOldest();
  }

  get(seq: number): JournalRecord | undefined {
    if (!this.size) return undefined;
    // Usually consecutive (then one step); a replica's journal may have gaps (coalesced batches).
    const i = this.first + seq - this.recs[this.first].seq;
    if (i >= this.first && i < this.recs.length && this.recs[i].seq === seq) return this.recs[i];
    let lo = this.first;
    let hi = this.recs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const m = this.recs[mid].seq;
      if (m === seq) return this.recs[mid];
      if (m < seq) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** Drop every record ≤ seq. */
  dropThrough(seq: number): void {
    while (this.size && this.recs[this.first].seq <= seq) this.dropOldest();
  }

  clear(): void {
    while (this.size) this.dropOldest();
  }

  private dropOldest(): void {
    const r = this.recs[this.first];
    this.recs[this.first++] = undefined as unknown as JournalRecord;
    this.bytes -= RECORD_OVERHEAD;
    if (r.data.length) {
      const ab = r.data.buffer as Counted;
      const n = ab[this.uses]!;
      ab[this.uses] = n - 1;
      if (n === 1) {
        this.bytes -= ab.byteLength;
        releaseBuffer(r.data);
      }
    }
    if (this.first === this.recs.length) {
      this.recs = [];
      this.first = 0;
    } else if (this.first > 4096 && this.first * 2 > this.recs.length) {
      this.recs = this.recs.slice(this.first);
      this.first = 0;
    }
  }
}
