/**
 * Shared pieces of the fuzz suite (test/fuzz/, test/scsi/fuzz.test.ts): how many inputs each
 * property tries, byte-level mutations of valid encodings, random splits of a byte stream, and
 * a tracker of the largest Buffer allocated while a decoder runs.
 *
 * Inputs per property: every property has an id in PLAN with a default (small, so `make test`
 * stays fast) and a share of a long run. `OFFSITE_FUZZ_RUNS=N` gives each property
 * round(N × share) inputs (the shares add up to 1, so N is the total over the suite) and lifts
 * the time limit; `OFFSITE_FUZZ_SEED` replays a run. Each property reports
 * `fuzz <id>: <n> inputs ...` as a test diagnostic (a `# ` line in the TAP output), so a long run
 * can be summed up with `grep -o 'fuzz [^:]*: [0-9]* inputs'`.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import fc from 'fast-check';

interface PlanEntry {
  /** Inputs tried by a plain `make test`. */
  runs: number;
  /** Fraction of OFFSITE_FUZZ_RUNS for a long run. */
  share: number;
}

export const PLAN: Readonly<Record<string, PlanEntry>> = {
  // iSCSI: PDU reader, BHS accessors, text keys, negotiation, login state machine, whole connections.
  'iscsi/reader-random': { runs: 3000, share: 0.08 },
  'iscsi/reader-mutated': { runs: 2000, share: 0.1 },
  'iscsi/reader-huge-length': { runs: 1000, share: 0.03 },
  'iscsi/bhs-fields': { runs: 2000, share: 0.02 },
  'iscsi/text': { runs: 3000, share: 0.06 },
  'iscsi/negotiation': { runs: 2000, share: 0.05 },
  'iscsi/login': { runs: 1500, share: 0.08 },
  'iscsi/connection': { runs: 1000, share: 0.06 },
  // SCSI: the existing random-CDB properties and the structure-aware ones.
  'scsi/random-interesting': { runs: 3000, share: 0.04 },
  'scsi/random-any': { runs: 3000, share: 0.04 },
  'scsi/mutated-valid': { runs: 3000, share: 0.09 },
  'scsi/sequences': { runs: 500, share: 0.05 },
  'scsi/cdb-fields': { runs: 2000, share: 0.01 },
  // Replication: frame decoder, lz4 payloads, segment decoding, the receiver's conversation.
  'replication/decoder-random': { runs: 3000, share: 0.06 },
  'replication/decoder-mutated': { runs: 1500, share: 0.08 },
  'replication/lz4-declared': { runs: 500, share: 0.02 },
  'replication/segment': { runs: 2000, share: 0.06 },
  'replication/segment-msgpack': { runs: 2000, share: 0.04 },
  'replication/receiver': { runs: 300, share: 0.03 },
  // The real appliance: here runs = rounds; each round is 35 connections over the 5 listening ports (reported as inputs).
  'ports/rounds': { runs: 25, share: 0.0002 },
};

{
  const sum = Object.values(PLAN).reduce((n, e) => n + e.share, 0);
  if (Math.abs(sum - 1) > 0.001) throw new Error(`fuzz PLAN shares add up to ${sum}, not 1`);
}

const TOTAL = process.env.OFFSITE_FUZZ_RUNS ? Number(process.env.OFFSITE_FUZZ_RUNS) : undefined;
if (TOTAL !== undefined && !(Number.isFinite(TOTAL) && TOTAL > 0)) throw new Error(`OFFSITE_FUZZ_RUNS=${process.env.OFFSITE_FUZZ_RUNS} is not a positive number`);
const SEED = process.env.OFFSITE_FUZZ_SEED ? Number(process.env.OFFSITE_FUZZ_SEED) : undefined;

/** Whether this is a long run (OFFSITE_FUZZ_RUNS set). */
export const LONG_RUN = TOTAL !== undefined;

/** Inputs planned for property `id`. */
export function runsFor(id: string): number {
  const e = PLAN[id];
  if (!e) throw new Error(`fuzz property ${id} is not in PLAN (test/helpers/fuzz.ts)`);
  return TOTAL === undefined ? e.runs : Math.max(1, Math.round(TOTAL * e.share));
}

/**
 * A node:test timeout for a test running property `id`: generous at the default size, scaled
 * for a long run (`msPerInput` is a pessimistic cost of one input). A hang fails the test.
 */
export function timeoutFor(id: string, msPerInput: number, baseMs = 60_000): number {
  return baseMs + Math.ceil(runsFor(id) * msPerInput);
}

/** The fast-check parameters that do not depend on the property's type (so they fit every fc.assert). */
export type FuzzParams = Pick<fc.Parameters<unknown>, 'numRuns' | 'seed' | 'interruptAfterTimeLimit' | 'includeErrorInReport'>;

export interface Fuzzing {
  /** fast-check parameters: numRuns, seed, and (at the default size only) a time limit. */
  readonly params: FuzzParams;
  /** Count one input (call it first thing in the predicate). */
  hit(): void;
  readonly tried: number;
  /** Print the count as a test diagnostic. */
  report(extra?: string): void;
}

/** Counting and parameters for property `id` of test `t`. */
export function fuzzing(t: TestContext, id: string, opts: { timeLimitMs?: number } = {}): Fuzzing {
  const runs = runsFor(id);
  let tried = 0;
  const params: FuzzParams = {
    numRuns: runs,
    // the failing assertion's message in the report (node:test does not print an error's cause)
    includeErrorInReport: true,
    ...(SEED !== undefined ? { seed: SEED } : {}),
    // A slow machine cuts the default run short rather than blowing the suite's time budget; a long run has no limit.
    ...(!LONG_RUN ? { interruptAfterTimeLimit: opts.timeLimitMs ?? 20_000 } : {}),
  };
  return {
    params,
    hit: () => {
      tried++;
    },
    get tried() {
      return tried;
    },
    report: (extra?: string) => {
      t.diagnostic(`fuzz ${id}: ${tried} inputs (planned ${runs}${SEED !== undefined ? `, seed ${SEED}` : ''})${extra ? `; ${extra}` : ''}`);
    },
  };
}

// ---- Mutations of valid encodings -------------------------------------------------------------

/** Values that break length and count fields: zero, one, sign and width boundaries, all ones. */
export const INTERESTING = [0, 1, 2, 3, 4, 7, 8, 16, 47, 48, 0x7f, 0x80, 0xff, 0x100, 0x1ff, 0x7fff, 0x8000, 0xffff, 0x10000, 0xffffff, 0x1000000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; len: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'duplicate'; from: number; len: number; at: number }
  | { kind: 'int'; at: number; width: 1 | 2 | 3 | 4; value: number; le: boolean };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.oneof(fc.constantFrom(0, 0xff, 0x7f, 0x80), fc.integer({ min: 0, max: 255 })) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('duplicate' as const), from: fc.nat(), len: fc.integer({ min: 1, max: 64 }), at: fc.nat() }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('int' as const),
      at: fc.nat(),
      width: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
      value: fc.oneof(fc.constantFrom(...INTERESTING), fc.nat()),
      le: fc.boolean(),
    }),
  },
);

/** Apply mutations in order; positions are taken modulo the current length. Never mutates `input`. */
export function mutate(input: Uint8Array, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of mutations) {
    const n = b.length;
    switch (m.kind) {
      case 'flip':
        if (n) b[m.at % n] ^= 1 << m.bit;
        break;
      case 'set':
        if (n) b[m.at % n] = m.value;
        break;
      case 'insert': {
        const at = m.at % (n + 1);
        b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
        break;
      }
      case 'delete': {
        if (!n) break;
        const at = m.at % n;
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(n, at + m.len))]);
        break;
      }
      case 'truncate':
        b = b.subarray(0, m.at % (n + 1));
        break;
      case 'duplicate': {
        if (!n) break;
        const from = m.from % n;
        const piece = b.subarray(from, Math.min(n, from + m.len));
        const at = m.at % (n + 1);
        b = Buffer.concat([b.subarray(0, at), piece, b.subarray(at)]);
        break;
      }
      case 'int': {
        if (n < m.width) break;
        const at = m.at % (n - m.width + 1);
        const v = m.value >>> 0;
        for (let i = 0; i < m.width; i++) {
          const shift = 8 * (m.le ? i : m.width - 1 - i);
          b[at + i] = shift >= 32 ? 0 : (v >>> shift) & 0xff;
        }
        break;
      }
    }
  }
  return b;
}

export const mutationsArb = (maxLength = 6, minLength = 1): fc.Arbitrary<Mutation[]> => fc.array(mutationArb, { minLength, maxLength });

// ---- Splitting a stream --------------------------------------------------------------------------

/** Cut points for a stream (positions taken modulo its length; duplicates give empty chunks). */
export const cutsArb: fc.Arbitrary<number[]> = fc.oneof(
  { weight: 1, arbitrary: fc.constant<number[]>([]) },
  { weight: 3, arbitrary: fc.array(fc.nat(), { maxLength: 12 }) },
  // byte by byte, now and then
  { weight: 1, arbitrary: fc.constant<number[]>([-1]) },
);

/** `bytes` cut at `cuts` (sorted modulo length); [-1] means one byte at a time. Empty chunks are kept. */
export function split(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  if (cuts.length === 1 && cuts[0] === -1) return Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
  const at = cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of at) {
    out.push(bytes.subarray(prev, c));
    prev = c;
  }
  out.push(bytes.subarray(prev));
  return out;
}

// ---- Allocation tracking -----------------------------------------------------------------------

type AllocFn = (size: number, ...rest: unknown[]) => Buffer;

/**
 * Run `fn` with Buffer.alloc / allocUnsafe / allocUnsafeSlow / concat watched; returns the
 * largest size any of them was asked for. (Allocations inside native addons are not seen.)
 */
export function largestAllocation<T>(fn: () => T): { result: T; largest: number } {
  const B = Buffer as unknown as Record<string, AllocFn>;
  const saved: Record<string, AllocFn> = {};
  let largest = 0;
  for (const name of ['alloc', 'allocUnsafe', 'allocUnsafeSlow']) {
    const orig = B[name];
    saved[name] = orig;
    B[name] = function (this: unknown, size: number, ...rest: unknown[]) {
      if (typeof size === 'number' && size > largest) largest = size;
      return orig.call(this, size, ...rest);
    } as AllocFn;
  }
  const concat = Buffer.concat;
  (Buffer as unknown as { concat: typeof Buffer.concat }).concat = function (list: readonly Uint8Array[], total?: number) {
    const size = total ?? list.reduce((n, b) => n + b.length, 0);
    if (size > largest) largest = size;
    return concat.call(Buffer, list, total);
  } as typeof Buffer.concat;
  try {
    const result = fn();
    return { result, largest };
  } finally {
    for (const [name, orig] of Object.entries(saved)) B[name] = orig;
    (Buffer as unknown as { concat: typeof Buffer.concat }).concat = concat;
  }
}

/**
 * Push `chunks` through a stream decoder, watching allocations. The first exception must be of
 * the decoder's typed error class (else the property fails), and a failed decoder must throw that
 * same error again on more bytes. Returns the error (if any), the largest pending byte count seen
 * after a push, and the largest allocation.
 */
export function feedStream<E extends Error>(
  chunks: readonly Buffer[],
  dec: { push(chunk: Buffer): unknown; readonly pending: number },
  typed: abstract new (...args: never[]) => E,
  what: string,
): { error?: E; maxPending: number; largestAlloc: number } {
  let maxPending = 0;
  const { result: error, largest } = largestAllocation(() => {
    for (const c of chunks) {
      try {
        dec.push(c);
      } catch (e) {
        if (!(e instanceof typed)) assert.fail(`${what} threw an untyped exception: ${describeError(e)}`);
        // The stream is dead: the same typed error again, never anything else.
        try {
          dec.push(Buffer.from([0]));
          assert.fail(`a failed ${what} accepted more bytes`);
        } catch (again) {
          assert.equal(again, e, `a failed ${what} throws its first error again`);
        }
        return e;
      }
      maxPending = Math.max(maxPending, dec.pending);
    }
    return undefined;
  });
  return { error, maxPending, largestAlloc: largest };
}

/** `b`, printed in a counterexample as its length and first bytes (not as thousands of numbers). */
export function compact<T extends Uint8Array>(b: T): T {
  Object.defineProperty(b, fc.toStringMethod, { value: () => `<${b.length} bytes: ${Buffer.from(b.subarray(0, 64)).toString('hex')}${b.length > 64 ? '…' : ''}>`, enumerable: false });
  return b;
}

/** The error's class name and code, for messages. */
export function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name}${(e as { code?: unknown }).code !== undefined ? `(${String((e as { code?: unknown }).code)})` : ''}: ${e.message}\n${e.stack ?? ''}`;
  return `non-Error thrown: ${String(e)}`;
}

/** A pino-compatible destination that keeps the records (for asserting no error-level log happened). */
export class LogCapture {
  readonly records: Record<string, unknown>[] = [];
  write(line: string): void {
    try {
      this.records.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      this.records.push({ level: 60, msg: `unparseable log line: ${line}` });
    }
  }
  /** Records at pino level error (50) or above. */
  errors(): Record<string, unknown>[] {
    return this.records.filter((r) => Number(r.level) >= 50);
  }
  clear(): void {
    this.records.length = 0;
  }
}
