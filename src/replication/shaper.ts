/**
 * Token-bucket bandwidth shaping for the replication link (--max-bandwidth, POST /bandwidth).
 * A frame larger than the bucket is allowed through by going into debt, so the long-run rate
 * holds for any frame size. rate 0 means unlimited.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private burstBytes: number;

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

  setRate(rateBytesPerSec: number): void {
    this.refill();
    this.rateBytesPerSec = rateBytesPerSec;
    this.burstBytes = TokenBucket.burstFor(rateBytesPerSec);
    this.tokens = Math.min(this.tokens, this.burstBytes);
  }

  private refill(): void {
    const t = this.now();
    if (this.rateBytesPerSec > 0) this.tokens = Math.min(this.burstBytes, this.tokens + ((t - this.last) / 1000) * this.rateBytesPerSec);
    this.last = t;
  }

  /** Milliseconds to wait before `bytes` may be sent; the bytes are taken now (debt allowed). */
  reserve(bytes: number): number {
    if (this.rateBytesPerSec <= 0) return 0;
    this.refill();
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.rateBytesPerSec) * 1000;
  }

  async take(bytes: number): Promise<void> {
    const waitMs = this.reserve(bytes);
    if (waitMs > 0) await new Promise((r) => setTimeout(r, waitMs));
  }
}
