/**
 * The journal's bookkeeping of its retained records, oldest first: sequence number, volume, data
 * bytes, time (the record's wall-clock stamp), the monotonic time it was written (ages: a stepped
 * wall clock moves no age), and the bytes appended up to and including the record. Held in typed-array
 * columns: as one object per record it lived until the record was trimmed, so every record's
 * entry outlived the young generation and cost the garbage collector a copy and a marking.
 * Records join at the new end (increasing sequence numbers) and leave from the old end. Indexes
 * count from the oldest retained record. Pure bookkeeping: no I/O.
 */
export class RecordSizes {
  private seqs = new Float64Array(1024);
  private bytes = new Float64Array(1024);
  private times = new Float64Array(1024);
  private monos = new Float64Array(1024);
  private cums = new Float64Array(1024);
  private vols = new Uint16Array(1024);
  private first = 0;
  private end = 0;

  get size(): number {
    return this.end - this.first;
  }

  push(seq: number, vol: number, bytes: number, timeMs: number, monoMs: number, cumBytes: number): void {
    if (this.end === this.seqs.length) this.makeRoom();
    const at = this.end++;
    this.seqs[at] = seq;
    this.vols[at] = vol;
    this.bytes[at] = bytes;
    this.times[at] = timeMs;
    this.monos[at] = monoMs;
    this.cums[at] = cumBytes;
  }

  seqAt(i: number): number {
    return this.seqs[this.first + i];
  }
  volAt(i: number): number {
    return this.vols[this.first + i];
  }
  bytesAt(i: number): number {
    return this.bytes[this.first + i];
  }
  timeAt(i: number): number {
    return this.times[this.first + i];
  }
  /** performance.now() when the record was written (or, for one from an earlier process life, its stamp on that scale). */
  monoAt(i: number): number {
    return this.monos[this.first + i];
  }
  cumAt(i: number): number {
    return this.cums[this.first + i];
  }

  /** Forget the oldest record. */
  shift(): void {
    if (this.first < this.end) this.first++;
    if (this.first === this.end) this.first = this.end = 0;
  }

  clear(): void {
    this.first = this.end = 0;
  }

  /** Forget the records after `seq` (the newest ones). */
  truncateAfter(seq: number): void {
    this.end = this.first + this.firstAfter(seq);
    if (this.first === this.end) this.first = this.end = 0;
  }

  /** The index of the record with this sequence number, or -1. */
  find(seq: number): number {
    const i = this.firstAfter(seq - 1);
    return i < this.size && this.seqAt(i) === seq ? i : -1;
  }

  /** The index of the oldest record with a sequence number above `seq` (size when none). */
  firstAfter(seq: number): number {
    // Sorted by sequence number (contiguous except across restarts' gaps): binary search.
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.seqAt(mid) <= seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Full at the end: move the live records down when at most half is live, else double. */
  private makeRoom(): void {
    const live = this.size;
    const capacity = live * 2 <= this.seqs.length ? this.seqs.length : this.seqs.length * 2;
    const move = <T extends Float64Array | Uint16Array>(a: T, make: (n: number) => T): T => {
      const to = capacity === a.length ? a : make(capacity);
      to.set(a.subarray(this.first, this.end));
      return to;
    };
    this.seqs = move(this.seqs, (n) => new Float64Array(n));
    this.bytes = move(this.bytes, (n) => new Float64Array(n));
    this.times = move(this.times, (n) => new Float64Array(n));
    this.monos = move(this.monos, (n) => new Float64Array(n));
    this.cums = move(this.cums, (n) => new Float64Array(n));
    this.vols = move(this.vols, (n) => new Uint16Array(n));
    this.first = 0;
    this.end = live;
  }
}
