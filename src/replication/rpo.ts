/**
 * The recovery-point controller (primary side). Closed loop, evaluated a few times a second:
 *   rpo           = now − time of the oldest write not yet durable at the replica (0 when caught up)
 *   drain rate    = smoothed rate at which the replica acknowledges journal bytes
 *   projected rpo = rpo + backlog / drain rate (how old the oldest data will be when the backlog lands)
 * As projected rpo approaches the target it (1) coalesces — ships only the newest version of
 * overwritten blocks; (2) with policy `throttle`, delays write acknowledgements just enough that
 * the backlog drains inside the target; (3) alerts (log line + metric) while the target is missed.
 * While the operator has paused shipping it only measures: no coalescing, no throttle. Nor does
 * it throttle while the link is down or an image sync runs: slower writers would not bring the
 * replica's point any closer.
 * Pure state machine: the caller feeds it observations and reads its decisions.
 */
export const RPO_POLICIES = ['coalesce', 'throttle', 'alert'] as const;
export type RpoPolicy = (typeof RPO_POLICIES)[number];

export function isRpoPolicy(v: unknown): v is RpoPolicy {
  return (RPO_POLICIES as readonly unknown[]).includes(v);
}

export interface RpoObservation {
  /** Now, on a clock no step moves (the appliance gives performance.now()); the times below are on it too. */
  nowMs: number;
  /** Time of the oldest write not yet acknowledged by the replica; undefined when caught up. */
  oldestUnackedMs?: number;
  backlogBytes: number;
  /** Bytes acknowledged since the previous observation. */
  ackedBytesDelta: number;
  /** Bytes appended since the previous observation. */
  appendedBytesDelta: number;
  /**
   * Shipping is paused by the operator (offsite pause): nothing drains, so neither coalescing nor
   * throttling can help, and writers are not slowed for a pause they were not asked about. The
   * RPO and a missed target are still reported as they are.
   */
  paused?: boolean;
  /**
   * Nothing writers do changes how soon the replica catches up: the link is down, or an image
   * sync runs (the replica's point moves only when it ends). Not throttled; RPO still reported.
   */
  throttleCannotHelp?: boolean;
  /**
   * The backlog changed meaning since the previous observation (a sync began or ended, the link
   * came up or went down): the difference is no acknowledgement, so no drain is learnt from it.
   */
  newBaseline?: boolean;
}

export interface RpoDecision {
  rpoSeconds: number;
  projectedRpoSeconds: number;
  drainBytesPerSec: number;
  coalesce: boolean;
  /** Delay to add to each write acknowledgement (policy throttle), ms. */
  throttleDelayMs: number;
  /** True while the (projected) RPO exceeds the target. */
  targetMissed: boolean;
}

export class RpoController {
  private last?: RpoObservation;
  private drain = 0;
  private incoming = 0;
  private throttleMs = 0;
  private coalescing = false;
  private decision: RpoDecision = { rpoSeconds: 0, projectedRpoSeconds: 0, drainBytesPerSec: 0, coalesce: false, throttleDelayMs: 0, targetMissed: false };

  constructor(
    public targetSeconds: number,
    public policy: RpoPolicy = 'coalesce',
    /** Link capacity hint (bytes/s) for before any drain has been measured, e.g. --max-bandwidth. */
    public linkHintBytesPerSec = 0,
  ) {}

  get current(): RpoDecision {
    return this.decision;
  }

  observe(o: RpoObservation): RpoDecision {
    const dt = this.last ? Math.max(1, o.nowMs - this.last.nowMs) / 1000 : 0;
    if (dt > 0) {
      const alpha = Math.min(1, dt / 2); // ~2 s smoothing
      const drainNow = o.ackedBytesDelta / dt;
      // Only learn the drain rate while there is a backlog to drain; otherwise it just mirrors load.
      // Paused, nothing drains: the link's rate is not learnt as zero.
      if (!o.paused && !o.newBaseline && (o.backlogBytes > 0 || drainNow > this.drain)) this.drain += alpha * (drainNow - this.drain);
      this.incoming += alpha * (o.appendedBytesDelta / dt - this.incoming);
    }
    this.last = o;
    const rpo = o.oldestUnackedMs === undefined ? 0 : Math.max(0, (o.nowMs - o.oldestUnackedMs) / 1000);
    const drain = Math.max(this.drain, this.linkHintBytesPerSec, 1);
    const projected = o.backlogBytes === 0 ? rpo : rpo + o.backlogBytes / drain;
    const target = this.targetSeconds;
    const enabled = target > 0;

    // (1) coalesce from half the target on, with hysteresis.
    if (enabled && this.policy !== 'alert' && !o.paused) {
      if (!this.coalescing && projected > 0.5 * target) this.coalescing = true;
      else if (this.coalescing && projected < 0.25 * target && o.backlogBytes === 0) this.coalescing = false;
    } else this.coalescing = false;

    // (2) throttle: proportional control on the projected RPO above 60% of the target,
    // bounded so that writers are slowed, never stopped.
    if (enabled && this.policy === 'throttle' && !o.paused && !o.throttleCannotHelp) {
      const pressure = (projected - 0.6 * target) / (0.4 * target);
      if (pressure > 0) this.throttleMs = Math.min(200, Math.max(this.throttleMs * 1.25 + 0.1, pressure * 20));
      else this.throttleMs = Math.max(0, this.throttleMs * 0.8 - 0.05);
    } else this.throttleMs = 0;

    this.decision = {
      rpoSeconds: rpo,
      projectedRpoSeconds: projected,
      drainBytesPerSec: this.drain,
      coalesce: this.coalescing,
      throttleDelayMs: this.throttleMs,
      targetMissed: enabled && rpo > target,
    };
    return this.decision;
  }
}
