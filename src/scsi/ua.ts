/**
 * Unit attention conditions per I_T nexus (SAM-5 §5.14, SPC-4 §5.14). Each nexus has a
 * queue of ASC/ASCQ codes; the oldest is reported (and removed) on the next command that
 * is not INQUIRY, REPORT LUNS or REQUEST SENSE. REQUEST SENSE returns and clears it too.
 */
export class UnitAttentions {
  /** Pending conditions by I_T nexus key; absent or empty: none. */
  private readonly queues = new Map<string, number[]>();
  /** Every I_T nexus that ever addressed this LU (a reset raises UAs for all of them). */
  private readonly known = new Set<string>();
  /** SPC-4 §5.14: the queue is bounded; the oldest entries stay, newer duplicates are dropped. */
  private static readonly MAX_QUEUE = 8;

  /** Remember a nexus so later target-wide events reach it. */
  register(itn: string): void {
    this.known.add(itn);
  }

  /** The I_T nexuses this LU knows (for establishing conditions). */
  nexuses(): Iterable<string> {
    return this.known;
  }

  /** Queue a condition for one nexus. */
  add(itn: string, ascq: number): void {
    this.known.add(itn);
    let q = this.queues.get(itn);
    if (!q) {
      q = [];
      this.queues.set(itn, q);
    }
    if (q.includes(ascq) || q.length >= UnitAttentions.MAX_QUEUE) return;
    q.push(ascq);
  }

  /** Queue a condition for every known nexus except `except`. */
  addAll(ascq: number, except?: string): void {
    for (const itn of this.known) if (itn !== except) this.add(itn, ascq);
  }

  /** Whether a condition is pending for this nexus (hot path: one Map lookup). */
  pending(itn: string): boolean {
    const q = this.queues.get(itn);
    return q !== undefined && q.length > 0;
  }

  /** Remove and return the oldest pending condition. */
  take(itn: string): number | undefined {
    const q = this.queues.get(itn);
    if (!q || q.length === 0) return undefined;
    const v = q.shift();
    if (q.length === 0) this.queues.delete(itn);
    return v;
  }

  /** Drop every condition for a nexus (e.g. reset of the nexus itself). */
  clear(itn: string): void {
    this.queues.delete(itn);
  }

  /** Snapshot for tests. */
  peek(itn: string): readonly number[] {
    return this.queues.get(itn) ?? [];
  }
}
