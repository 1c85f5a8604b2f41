/**
 * One logical unit: its volume and the SCSI state kept per LU (mode parameters, unit
 * attentions, SPC-2 and persistent reservations, the COMPARE AND WRITE gate, copy results).
 */
import type { Logger } from '../common/logger';
import type { Volume } from '../volume/volume';
import { EMPTY_PR_STATE, type PrState } from './pr';
import { PrStore } from './pr-store';
import { Spc2Reservation } from './reserve6';
import { TaskAbortedError } from './sense';
import { UnitAttentions } from './ua';

/** Changeable mode parameters (current values; defaults in `mode.ts`). */
export interface ModeState {
  /** Caching page WCE: volatile write cache enabled (SBC-3 §6.5.5). When false every write is FUA. */
  wce: boolean;
  /** Control page D_SENSE: descriptor-format sense (SPC-4 §7.5.8). */
  dsense: boolean;
  /** Control page SWP: software write protect (SPC-4 §7.5.8). */
  swp: boolean;
}

/** Product identification reported in INQUIRY (already space-padded to 8/16/4). */
export interface ProductInfo {
  vendorId: string;
  productId: string;
  revision: string;
}

/** Limits this implementation advertises in the Block Limits VPD page and enforces. */
export interface BlockLimits {
  maxTransferBlocks: number;
  optimalTransferBlocks: number;
  maxWriteSameBlocks: number;
  maxUnmapBlocks: number;
  maxUnmapDescriptors: number;
  maxCompareAndWriteBlocks: number;
}

/**
 * Writes take the gate shared; COMPARE AND WRITE and ORWRITE take it exclusive, so their
 * read-compare-write cannot interleave with any other write of the LU (SBC-3 §5.2: atomic).
 * The uncontended shared path allocates nothing.
 */
export class WriteGate {
  private shared = 0;
  private exclusive = false;
  private sharedWaiters: (() => void)[] = [];
  private exclusiveWaiters: (() => void)[] = [];

  /** Undefined when entered at once; otherwise await the promise. */
  enterShared(): Promise<void> | undefined {
    if (!this.exclusive && this.exclusiveWaiters.length === 0) {
      this.shared++;
      return undefined;
    }
    return new Promise((resolve) => this.sharedWaiters.push(() => {
      this.shared++;
      resolve();
    }));
  }

  exitShared(): void {
    if (--this.shared === 0) this.pump();
  }

  enterExclusive(): Promise<void> {
    if (!this.exclusive && this.shared === 0 && this.exclusiveWaiters.length === 0) {
      this.exclusive = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.exclusiveWaiters.push(resolve));
  }

  exitExclusive(): void {
    this.exclusive = false;
    this.pump();
  }

  private pump(): void {
    if (this.exclusive) return;
    if (this.exclusiveWaiters.length > 0) {
      if (this.shared === 0) {
        this.exclusive = true;
        this.exclusiveWaiters.shift()!();
      }
      return;
    }
    const waiting = this.sharedWaiters;
    if (waiting.length === 0) return;
    this.sharedWaiters = [];
    for (const w of waiting) w();
  }
}

/** Result of one EXTENDED COPY kept for RECEIVE COPY RESULTS (COPY STATUS), per nexus and list id. */
export interface CopyResult {
  status: number;
  segmentsProcessed: number;
  transferCountBlocks: number;
}

export class LogicalUnit {
  readonly blockSize: number;
  readonly blockShift: number;
  /** Capacity in logical blocks (follows the volume when it grows: see capacityChanged). */
  blocks: number;
  readonly ua = new UnitAttentions();
  readonly spc2 = new Spc2Reservation();
  readonly gate = new WriteGate();
  readonly mode: ModeState = { wce: true, dsense: false, swp: false };
  /** Persistent reservation state; replaced (never mutated) after the store has it. */
  pr: PrState = EMPTY_PR_STATE;
  readonly prStore: PrStore;
  /** Serialises PR OUT so each one persists the state the next one starts from. */
  prQueue: Promise<unknown> = Promise.resolve();
  readonly copyResults = new Map<string, CopyResult>();
  /**
   * PREEMPT AND ABORT count, and the count at which each I_T nexus was last preempted that way:
   * a task that waited for the gate compares them to learn whether its nexus was aborted while
   * it waited (its reservation check is older than the preemption). Only that slow path looks.
   */
  private abortEpoch = 0;
  private readonly abortedAt = new Map<string, number>();
  /**
   * EXTENDED COPY writes into this LU in flight, by the I_T nexus (of this LU's target) whose
   * rights they use. A copy issued at another target is no task of that nexus here, so the
   * transport cannot abort it: PREEMPT AND ABORT waits for its chunk instead (the copy then stops).
   */
  private readonly copyWrites = new Map<Promise<void>, string>();

  constructor(
    readonly lun: number,
    readonly volume: Volume,
    readonly product: ProductInfo,
    readonly limits: BlockLimits,
    stateDir: string,
    readonly logger?: Logger,
  ) {
    this.blockSize = volume.blockSize;
    this.blockShift = Math.log2(volume.blockSize);
    if (!Number.isInteger(this.blockShift)) throw new Error(`block size ${volume.blockSize} is not a power of two`);
    this.blocks = Math.floor(volume.sizeBytes / volume.blockSize);
    this.prStore = new PrStore(stateDir, lun);
  }

  /** Take the volume's size again (it grew); whether the capacity changed. */
  refreshCapacity(): boolean {
    const blocks = Math.floor(this.volume.sizeBytes / this.blockSize);
    if (blocks === this.blocks) return false;
    this.blocks = blocks;
    return true;
  }

  /** PREEMPT AND ABORT of these I_T nexuses: their tasks still waiting for the gate are refused. */
  nexusesAborted(itns: Iterable<string>): void {
    this.abortEpoch++;
    for (const itn of itns) this.abortedAt.set(itn, this.abortEpoch);
  }

  /** Now, for `abortedSince` (read before a task starts waiting). */
  get abortMark(): number {
    return this.abortEpoch;
  }

  /** Whether the tasks of `itn` were aborted after `mark` (a value of `abortMark`). */
  abortedSince(itn: string, mark: number): boolean {
    return mark !== this.abortEpoch && (this.abortedAt.get(itn) ?? 0) > mark;
  }

  /**
   * The slow path of entering the gate shared, for a task of `itn`: wait, then refuse it
   * (leaving the gate) when PREEMPT AND ABORT aborted its nexus meanwhile, so that it cannot
   * write after the preemption completed. Callers take the fast path themselves:
   * `const w = lu.gate.enterShared(); if (w) await lu.waitShared(w, itn)`.
   */
  async waitShared(wait: Promise<void>, itn: string): Promise<void> {
    const mark = this.abortEpoch;
    await wait;
    if (this.abortedSince(itn, mark)) {
      this.gate.exitShared();
      throw new TaskAbortedError();
    }
  }

  /** Enter the gate exclusive for a task of `itn`; refused like `waitShared`. */
  async enterExclusive(itn: string): Promise<void> {
    const mark = this.abortEpoch;
    await this.gate.enterExclusive();
    if (this.abortedSince(itn, mark)) {
      this.gate.exitExclusive();
      throw new TaskAbortedError();
    }
  }

  /** Run an EXTENDED COPY write into this LU for `itn`, tracked for `copyWritesSettled`. */
  copyWrite(itn: string, write: Promise<void>): Promise<void> {
    this.copyWrites.set(write, itn);
    const done = () => void this.copyWrites.delete(write);
    write.then(done, done);
    return write;
  }

  /** Resolves once the EXTENDED COPY writes into this LU for these nexuses, in flight now, have settled. */
  async copyWritesSettled(itns: readonly string[]): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (const [w, itn] of this.copyWrites) if (itns.includes(itn)) waits.push(w.catch(() => undefined));
    await Promise.all(waits);
  }

  /** Writes refused: the volume is read-only or SWP is set. */
  get writeProtected(): boolean {
    return this.volume.readOnly || this.mode.swp;
  }
}
