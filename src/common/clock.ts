/**
 * Time for leases. The wall clock can be stepped (NTP, an operator) and the monotonic clock
 * stops while the machine or VM is suspended: a lease holder that trusted either alone could go
 * on writing after its lease ran out elsewhere. An Instant records both; a lease holder counts the
 * larger of the two elapsed times (elapsedMaxMs), one who waits for a lease to lapse the smaller
 * (elapsedMinMs): each errs on the safe side whichever clock misleads it.
 */
export interface Instant {
  wall: number;
  mono: number;
}

export function instant(): Instant {
  return { wall: Date.now(), mono: performance.now() };
}

/** Time since `since` by whichever clock says more (Infinity for none): for a lease holder, who must not overstay. */
export function elapsedMaxMs(since: Instant | undefined): number {
  if (!since) return Infinity;
  return Math.max(Date.now() - since.wall, performance.now() - since.mono);
}

/** Time since `since` by whichever clock says less: for one who waits out someone else's lease. */
export function elapsedMinMs(since: Instant): number {
  return Math.min(Date.now() - since.wall, performance.now() - since.mono);
}

/**
 * A clock for whoever grants leases (the witness): it must err towards "still held", so it runs
 * on the monotonic clock, which no step moves forward and which stands still while suspended.
 * Whole milliseconds on the wall clock's scale (its origin is the process start).
 */
export function grantorNow(): number {
  return Math.floor(performance.timeOrigin + performance.now());
}

/** What to add to a wall-clock time to put it on the monotonic clock (performance.now()), by the clocks now. */
export function wallToMonoOffset(): number {
  return performance.now() - Date.now();
}

/**
 * A wall-clock time (ms since the epoch) on the monotonic clock, by the clocks' offset (now, or
 * one read once for many stamps), and never later than `notAfter` (now): ages of stamps from
 * another process life (or another site) count from here on, whatever steps the wall clock takes later.
 */
export function monoOfWall(wallMs: number, offset = wallToMonoOffset(), notAfter = performance.now()): number {
  return Math.min(notAfter, wallMs + offset);
}

/** A monotonic time as a wall-clock time (whole ms since the epoch), by the clocks' offset now. */
export function wallOfMono(monoMs: number): number {
  return Math.floor(Date.now() - (performance.now() - monoMs));
}
