/**
 * Token-bucket bandwidth shaping for the replication link (--max-bandwidth, POST /bandwidth).
 * A frame larger than the bucket is allowed through by going into debt, so the long-run rate
 * holds for any frame size. rate 0 means unlimited.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private burstBytes: number;
  /**
   * Every byte the bucket was ever credited (not capped by the burst): the clock a waiting
   * sender's turn is measured on, so a rate change can tell how much of its debt is left.
   */
  private credited = 0;
  /** Senders waiting their turn in take(): a rate change wakes them to wait again under it. */
  private readonly waiters = new Set<() => void>();

  constructor(private rateBytesPerSec: number, private readonly now: () => number = () => performance.now()) {
    this.burstBytes = TokenBucket.burstFor(rateBytesPerSec);
    this.tokens = this.burstBytes;
    this.last = now();
  }

  private static burstFor(rate: number): number {
    return Math.max(64 * 1024, Math.round(rate / 20)); // 50 ms worth, at least 64 KiB
  }

  get rate(): number {
    return this.rateBytesPerSec;
  }

  /**
   * A new rate, at once: a sender already waiting under the old one is woken and waits only for
   * what is left of its debt at the new rate (none when unlimited). Lifting the cap forgives the
   * debt, so the first frame after a later cap does not pay for frames sent while unlimited.
   */
  setRate(rateBytesPerSec: number): void {
    this.refill();
    this.rateBytesPerSec = rateBytesPerSec;
    this.burstBytes = TokenBucket.burstFor(rateBytesPerSec);
    this.tokens = rateBytesPerSec > 0 ? Math.min(this.tokens, this.burstBytes) : this.burstBytes;
    for (const wake of [...this.waiters]) wake();
  }

  private refill(): void {
    const t = this.now();
    if (this.rateBytesPerSec > 0) {
      const add = ((t - this.last) / 1000) * this.rateBytesPerSec;
      this.credited += add;
      this.tokens = Math.min(this.burstBytes, this.tokens + add);
    }
    this.last = t;
  }

  /** Milliseconds to wait before `bytes` may be sent; the bytes are taken now (debt allowed). */
  reserve(bytes: number): number {
    if (this.rateBytesPerSec <= 0) return 0;
    this.refill();
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.rateBytesPerSec) * 1000;
  }

  /** Take `bytes`, waiting until the bucket has been credited the debt this leaves (rate changes apply meanwhile). */
  async take(bytes: number): Promise<void> {
    if (this.reserve(bytes) <= 0) return;
    // Its turn comes once the bucket has been credited the debt owed right after this take.
    const turn = this.credited - this.tokens;
    for (;;) {
      this.refill();
      if (this.rateBytesPerSec <= 0) return;
      const waitMs = ((turn - this.credited) / this.rateBytesPerSec) * 1000;
      if (waitMs <= 0) return;
      const rateChanged = await new Promise<boolean>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve(true);
        };
        const timer = setTimeout(() => {
          this.waiters.delete(wake);
          resolve(false);
        }, waitMs);
        this.waiters.add(wake);
      });
      // Waited out at the rate it started under (a timer may fire a hair early: not waited again).
      if (!rateChanged) return;
    }
  }
}
