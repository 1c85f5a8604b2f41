/**
 * Online verify (primary side): compares every volume with the replica's copy while writes and
 * replication go on, without pausing either. Each range is hashed here as it stood after some
 * sequence number and compared at the replica at that same point of the stream (see
 * Shipper.verify); a range a write overtakes is hashed again, split into chunks when it keeps
 * being overtaken, and reported as unverified only when even its chunks never settle. The result
 * says which chunks differ. A repair run (--repair) then sends each differing chunk's data,
 * placed in the stream the same way, and the replica writes it over its copy at that point.
 */
import type { Logger } from '../common/logger';
import { OffsiteError } from '../common/errors';
import type { VerifyOutcome, VerifyProbe, VolumeDescriptor } from './ports';
import { SYNC_CHUNK_BYTES } from './protocol';
import { TokenBucket } from './shaper';

export interface VerifySource {
  volumes(): VolumeDescriptor[];
  /**
   * Hash a range (aligned to SYNC_CHUNK_BYTES) as it stands after some sequence number, and watch
   * it for later writes until release(); undefined when a write overtook the read (try again).
   * `withData`: a repair probe, carrying the range's data instead of its hashes.
   */
  probe(volume: string, offsetBytes: number, lengthBytes: number, withData?: boolean): Promise<(VerifyProbe & { release(): void }) | undefined>;
}

export interface VerifyTarget {
  verify(probe: VerifyProbe): Promise<VerifyOutcome>;
  connected(): boolean;
  /** Give up every probe still waiting (a stop need not wait for the replica to catch up). */
  cancel(): void;
}

export interface VerifyRange {
  volume: string;
  offsetBytes: number;
  lengthBytes: number;
}

export interface VerifyStatus {
  /** idle (never ran here), running, done (every byte compared or reported unverified), stopped, failed. */
  state: 'idle' | 'running' | 'done' | 'stopped' | 'failed';
  volumes: string[];
  startedAt?: string;
  finishedAt?: string;
  totalBytes: number;
  checkedBytes: number;
  mismatchedChunks: number;
  mismatchedBytes: number;
  /** Bytes no comparison could be placed for (writes kept overtaking them). */
  unverifiedBytes: number;
  /** Ranges hashed again because a write overtook them. */
  retries: number;
  /** Waiting for the replication link to come back. */
  waitingForReplica: boolean;
  /** The run repairs what differs (--repair): the replica's chunks are overwritten with the primary's. */
  repair: boolean;
  /** Who started the run: an operator (offsite verify, POST /verify) or the schedule (--verify-every). */
  /** Who started the run: an operator, the schedule, or a start after an unclean stop (a repair run, see appliance/replication.ts). */
  trigger: 'operator' | 'schedule' | 'unclean-stop';
  /** When the latest run over every volume started (this one or an earlier one): the schedule counts from it. */
  lastFullRunStartedAt?: string;
  /** Differing chunks overwritten with the primary's data (a repair run); the rest of mismatchedChunks stay different. */
  repairedChunks: number;
  chunkBytes: number;
  /** The differing ranges (adjacent chunks merged), the first MAX_LISTED. */
  mismatches: VerifyRange[];
  unverified: VerifyRange[];
  error?: string;
}

export class VerifyError extends OffsiteError {}

/** An operator's verify call (POST /verify): start over these volumes (all when empty) at a read-rate cap (0: none), or stop. */
export interface VerifyRequest {
  volumes: string[];
  rateBytesPerSec: number;
  stop: boolean;
  repair: boolean;
}

/** Bytes hashed and compared per probe (split into chunks when writes keep overtaking it). */
export const VERIFY_RANGE_BYTES = 1 << 20;
/**
 * Ranges in flight at once. A probe waits for the stream to reach its sequence number, which
 * takes as long as the replica is behind (up to the RPO on a busy WAN): with a handful in flight,
 * a replica seconds behind would be verified at a few MiB per lag. A waiting probe holds only
 * its hashes (8 bytes per 64 KiB) and a range watch.
 */
const WORKERS = 256;
/** Ranges read and hashed at once (each read holds its 1 MiB until hashed). */
const READ_SLOTS = 4;
/** A run fails when the replica has been away this long (it names the chunks compared so far). */
const REPLICA_AWAY_LIMIT_MS = 5 * 60_000;
/** A range overtaken this often is split into chunks; a chunk this often, reported unverified. */
const MAX_ATTEMPTS = 3;
const MAX_CHUNK_ATTEMPTS = 8;
const MAX_LISTED = 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Verifier {
  private current: VerifyStatus = emptyStatus();
  private run?: Promise<void>;
  private stopping = false;
  private reading = 0;
  private readWaiters: (() => void)[] = [];

  constructor(
    private readonly source: VerifySource,
    private readonly target: VerifyTarget,
    private readonly logger: Logger,
    /** Called with the final status of each run (to keep it across restarts). */
    private readonly onFinish?: (s: VerifyStatus) => Promise<void>,
  ) {}

  /** The last run's result, kept from an earlier process. */
  restore(s: VerifyStatus): void {
    if (this.run) return;
    const num = (n: unknown) => (Number.isSafeInteger(n) && (n as number) >= 0 ? (n as number) : 0);
    const ranges = (l: unknown) => (Array.isArray(l) ? (l as VerifyRange[]).filter((r) => r && typeof r.volume === 'string' && Number.isSafeInteger(r.offsetBytes) && Number.isSafeInteger(r.lengthBytes)).slice(0, MAX_LISTED) : []);
    const states: VerifyStatus['state'][] = ['idle', 'done', 'stopped', 'failed'];
    this.current = {
      ...emptyStatus(),
      state: s.state === 'running' ? 'stopped' : states.includes(s.state) ? s.state : 'idle',
      volumes: Array.isArray(s.volumes) ? s.volumes.filter((v) => typeof v === 'string') : [],
      startedAt: typeof s.startedAt === 'string' ? s.startedAt : undefined,
      lastFullRunStartedAt: typeof s.lastFullRunStartedAt === 'string' ? s.lastFullRunStartedAt : undefined,
      finishedAt: typeof s.finishedAt === 'string' ? s.finishedAt : undefined,
      totalBytes: num(s.totalBytes),
      checkedBytes: num(s.checkedBytes),
      mismatchedChunks: num(s.mismatchedChunks),
      mismatchedBytes: num(s.mismatchedBytes),
      unverifiedBytes: num(s.unverifiedBytes),
      retries: num(s.retries),
      repair: s.repair === true,
      trigger: s.trigger === 'schedule' || s.trigger === 'unclean-stop' ? s.trigger : 'operator',
      repairedChunks: num(s.repairedChunks),
      mismatches: ranges(s.mismatches),
      unverified: ranges(s.unverified),
      error: typeof s.error === 'string' ? s.error : undefined,
    };
  }

  status(): VerifyStatus {
    return { ...this.current, mismatches: [...this.current.mismatches], unverified: [...this.current.unverified] };
  }

  get running(): boolean {
    return this.run !== undefined;
  }

  /**
   * Start a run over these volumes (all when empty), scanning at most `rateBytesPerSec` (0: no
   * cap); with `repair`, each differing chunk is overwritten at the replica with the primary's data.
   * `only`: just these ranges (the volumes are theirs; a range past a volume's end is cut there).
   */
  start(volumeNames: string[], rateBytesPerSec = 0, repair = false, trigger: VerifyStatus['trigger'] = 'operator', only?: VerifyRange[]): VerifyStatus {
    if (this.run) throw new VerifyError('VERIFY_RUNNING', `a verify is already running (${this.current.checkedBytes} of ${this.current.totalBytes} bytes checked); stop it first`);
    const all = this.source.volumes();
    if (only) volumeNames = [...new Set(only.map((r) => r.volume))].filter((n) => all.some((v) => v.name === n));
    for (const n of volumeNames) if (!all.some((v) => v.name === n)) throw new VerifyError('UNKNOWN_VOLUME', `no volume ${n} (volumes: ${all.map((v) => v.name).join(', ') || 'none'})`);
    if (!this.target.connected()) throw new VerifyError('REPLICA_DISCONNECTED', 'the replica is not connected (or an image sync is running): verify compares against a consistent replica');
    const volumes = all.filter((v) => (only ? volumeNames.includes(v.name) : volumeNames.length === 0 || volumeNames.includes(v.name))).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const ranges = only ? clipped(only, volumes) : volumes.map((v) => ({ volume: v.name, offsetBytes: 0, lengthBytes: v.sizeBytes }));
    const startedAt = new Date().toISOString();
    const lastFullRunStartedAt = !only && volumes.length === all.length ? startedAt : this.current.lastFullRunStartedAt;
    this.current = { ...emptyStatus(), state: 'running', volumes: volumes.map((v) => v.name), startedAt, lastFullRunStartedAt, totalBytes: ranges.reduce((n, r) => n + r.lengthBytes, 0), repair, trigger };
    this.stopping = false;
    this.logger.info({ volumes: this.current.volumes, totalBytes: this.current.totalBytes, ranges: only ? ranges.length : undefined, rateBytesPerSec, repair, trigger }, 'verify started: comparing the volumes with the replica');
    const rate = new TokenBucket(rateBytesPerSec);
    this.run = this.scan(ranges, rate)
      .then(
        () => {
          this.current.state = this.stopping ? 'stopped' : 'done';
        },
        (e: Error) => {
          this.current.state = 'failed';
          this.current.error = e.message;
        },
      )
      .then(() => this.finish())
      .finally(() => (this.run = undefined));
    return this.status();
  }

  async stop(): Promise<VerifyStatus> {
    this.stopping = true;
    if (this.run) this.target.cancel();
    await this.run;
    return this.status();
  }

  private async finish(): Promise<void> {
    const s = this.current;
    s.mismatches = merged(s.mismatches);
    s.unverified = merged(s.unverified);
    s.finishedAt = new Date().toISOString();
    s.waitingForReplica = false;
    const summary = { state: s.state, checkedBytes: s.checkedBytes, totalBytes: s.totalBytes, mismatchedChunks: s.mismatchedChunks, repairedChunks: s.repair ? s.repairedChunks : undefined, unverifiedBytes: s.unverifiedBytes, retries: s.retries, error: s.error };
    if (s.state === 'failed') this.logger.error(summary, 'verify failed');
    else if (s.mismatchedChunks > s.repairedChunks) this.logger.error({ ...summary, firstMismatches: s.mismatches.slice(0, 10) }, 'verify found chunks that differ on the replica');
    else if (s.mismatchedChunks > 0) this.logger.warn({ ...summary, firstMismatches: s.mismatches.slice(0, 10) }, 'verify found chunks that differed on the replica and repaired them all');
    else this.logger.info(summary, s.state === 'stopped' ? 'verify stopped' : s.unverifiedBytes > 0 ? 'verify done: no difference, but some ranges could not be compared (writes kept overtaking them)' : 'verify done: the replica equals the primary');
    try {
      await this.onFinish?.(this.status());
    } catch (e) {
      this.logger.warn({ err: e }, 'verify: could not save the result');
    }
  }

  private async scan(within: VerifyRange[], rate: TokenBucket): Promise<void> {
    const ranges = (function* () {
      for (const w of within) {
        const end = w.offsetBytes + w.lengthBytes;
        for (let off = w.offsetBytes; off < end; off += VERIFY_RANGE_BYTES) yield { volume: w.volume, offsetBytes: off, lengthBytes: Math.min(VERIFY_RANGE_BYTES, end - off) };
      }
    })();
    let failure: Error | undefined;
    const worker = async () => {
      for (;;) {
        if (this.stopping || failure) return;
        const next = ranges.next();
        if (next.done) return;
        // Paced, but a stop does not wait out the pace (with many ranges in flight and a low
        // rate, the last of them is due minutes from now).
        for (const until = performance.now() + rate.reserve(next.value.lengthBytes); !this.stopping && performance.now() < until; ) await sleep(Math.min(100, until - performance.now()));
        if (this.stopping) return;
        try {
          if (!(await this.verifyRange(next.value, MAX_ATTEMPTS))) {
            // Overtaken again and again as a whole: chunk by chunk, each with more tries.
            const r = next.value;
            for (let off = r.offsetBytes; off < r.offsetBytes + r.lengthBytes && !this.stopping; off += SYNC_CHUNK_BYTES) {
              const chunk = { volume: r.volume, offsetBytes: off, lengthBytes: Math.min(SYNC_CHUNK_BYTES, r.offsetBytes + r.lengthBytes - off) };
              if (!(await this.verifyRange(chunk, MAX_CHUNK_ATTEMPTS))) {
                this.current.unverifiedBytes += chunk.lengthBytes;
                addRange(this.current.unverified, chunk);
              }
            }
          }
        } catch (e) {
          failure ??= e as Error;
        }
      }
    };
    await Promise.all(Array.from({ length: WORKERS }, worker));
    if (failure) throw failure;
  }

  /** Compare one range (and repair what differs, in a repair run); false when writes overtook every attempt. */
  private async verifyRange(r: VerifyRange, attempts: number): Promise<boolean> {
    const outcome = await this.place(r, attempts, false);
    if (outcome?.kind !== 'compared') return outcome === undefined ? this.stopping : true;
    this.current.checkedBytes += r.lengthBytes;
    for (const i of outcome.mismatched) {
      const off = r.offsetBytes + i * SYNC_CHUNK_BYTES;
      const chunk = { volume: r.volume, offsetBytes: off, lengthBytes: Math.min(SYNC_CHUNK_BYTES, r.offsetBytes + r.lengthBytes - off) };
      this.current.mismatchedChunks++;
      this.current.mismatchedBytes += chunk.lengthBytes;
      addRange(this.current.mismatches, chunk);
      if (this.current.repair && (await this.place(chunk, MAX_CHUNK_ATTEMPTS, true))?.kind === 'repaired') this.current.repairedChunks++;
    }
    return true;
  }

  /**
   * Hash (or, `withData`, read) a range and have the replica compare (or take) it at the same
   * point of the stream, waiting out link drops and trying again when writes overtake it.
   * Undefined when they overtook every attempt, or the run is stopping.
   */
  private async place(r: VerifyRange, attempts: number, withData: boolean): Promise<VerifyOutcome | undefined> {
    let awaySince: number | undefined;
    for (let attempt = 1; !this.stopping; ) {
      if (!this.target.connected()) {
        this.current.waitingForReplica = true;
        awaySince ??= performance.now();
        if (performance.now() - awaySince > REPLICA_AWAY_LIMIT_MS) throw new VerifyError('REPLICA_DISCONNECTED', `the replica has been away for ${Math.round(REPLICA_AWAY_LIMIT_MS / 60_000)} minutes`);
        await sleep(250);
        continue;
      }
      awaySince = undefined;
      this.current.waitingForReplica = false;
      const p = await this.readSlot(() => this.source.probe(r.volume, r.offsetBytes, r.lengthBytes, withData));
      let outcome: VerifyOutcome = { kind: 'stale' };
      if (p) {
        try {
          outcome = await this.target.verify(p);
        } finally {
          p.release();
        }
      }
      switch (outcome.kind) {
        case 'unsupported':
          throw new VerifyError('VERIFY_UNSUPPORTED', 'the replica does not answer verify requests (it runs an older offsite): upgrade it first');
        case 'notReady':
          throw new VerifyError('REPLICA_NOT_READY', `the replica cannot ${withData ? 'repair' : 'compare'} now: ${outcome.reason}`);
        case 'linkDown':
          continue; // placed again once the link is back; not the range's fault
        case 'stale':
          this.current.retries++;
          if (attempt++ >= attempts) return undefined;
          await sleep(Math.min(500, 5 * attempt * attempt));
          continue;
        default:
          return outcome;
      }
    }
    return undefined;
  }

  /** At most READ_SLOTS reads at once, however many ranges wait for their place in the stream. */
  private async readSlot<T>(fn: () => Promise<T>): Promise<T> {
    while (this.reading >= READ_SLOTS) await new Promise<void>((r) => this.readWaiters.push(r));
    this.reading++;
    try {
      return await fn();
    } finally {
      this.reading--;
      this.readWaiters.shift()?.();
    }
  }
}

function emptyStatus(): VerifyStatus {
  return { state: 'idle', volumes: [], totalBytes: 0, checkedBytes: 0, mismatchedChunks: 0, mismatchedBytes: 0, unverifiedBytes: 0, retries: 0, waitingForReplica: false, repair: false, trigger: 'operator', repairedChunks: 0, chunkBytes: SYNC_CHUNK_BYTES, mismatches: [], unverified: [] };
}

/**
 * Ranges within their volumes, in volume order then offset, starting on a chunk boundary (the
 * replica compares whole chunks), overlaps joined.
 */
function clipped(only: VerifyRange[], volumes: VolumeDescriptor[]): VerifyRange[] {
  const sizes = new Map(volumes.map((v) => [v.name, v.sizeBytes]));
  const within: VerifyRange[] = [];
  for (const r of only) {
    const size = sizes.get(r.volume);
    if (size === undefined) continue;
    const start = Math.max(0, Math.floor(r.offsetBytes / SYNC_CHUNK_BYTES) * SYNC_CHUNK_BYTES);
    const end = Math.min(size, r.offsetBytes + r.lengthBytes);
    if (end > start) within.push({ volume: r.volume, offsetBytes: start, lengthBytes: end - start });
  }
  return joinRanges(within);
}

/** Ranges sorted by volume and offset, overlapping or adjacent ones joined. */
export function joinRanges(list: readonly VerifyRange[]): VerifyRange[] {
  const out: VerifyRange[] = [];
  for (const r of [...list].sort((a, b) => (a.volume !== b.volume ? (a.volume < b.volume ? -1 : 1) : a.offsetBytes - b.offsetBytes))) {
    const last = out[out.length - 1];
    if (last && last.volume === r.volume && r.offsetBytes <= last.offsetBytes + last.lengthBytes) last.lengthBytes = Math.max(last.lengthBytes, r.offsetBytes + r.lengthBytes - last.offsetBytes);
    else out.push({ ...r });
  }
  return out;
}

/** Add a range to a list (the workers finish ranges in any order: merged() tidies it at the end). */
function addRange(list: VerifyRange[], r: VerifyRange): void {
  const last = list[list.length - 1];
  if (last && last.volume === r.volume && last.offsetBytes + last.lengthBytes === r.offsetBytes) last.lengthBytes += r.lengthBytes;
  else if (list.length < 4 * MAX_LISTED) list.push({ ...r });
}

/** Sorted, adjacent ranges joined, at most MAX_LISTED. */
function merged(list: VerifyRange[]): VerifyRange[] {
  return joinRanges(list).slice(0, MAX_LISTED);
}
