/**
 * Fuzzing the replication wire (issue 6 "Bad input"): the streaming frame decoder
 * (src/replication/protocol.ts FrameDecoder), lz4 payloads with lying size prefixes, the segment
 * decoder (src/replication/segment.ts decodeSegment) on mutated metas and payloads and on
 * arbitrary msgpack, and the receiver's conversation (src/replication/receiver.ts) fed mutated
 * frames over a real socket.
 *
 * Mutations of whole frames come in two kinds: plain (most die at the CRC) and "CRC repaired"
 * (the CRC is recomputed after the mutation, so it reaches the msgpack meta, the lz4 payload and
 * the segment checks behind it). The only acceptable outcomes are a valid decode or a
 * ReplicationError with a ReplicationErrorCode; never an untyped exception, never more memory
 * than the bytes received (a declared length is capped before anything is allocated).
 *
 * Sizes: see PLAN in test/helpers/fuzz.ts (OFFSITE_FUZZ_RUNS=N for a long run).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import test from 'node:test';
import { crc32c } from '@node-rs/crc32';
import fc from 'fast-check';
import { compressSync } from 'lz4-napi';
import { SIZE_CLASS } from '../../src/common/buffer-pool';
import { maxDecompressedSize } from '../../src/common/lz4';
import pino from 'pino';
import { OffsiteError } from '../../src/common/errors';
import { ReplicationError, ReplicationErrorCode } from '../../src/replication/errors';
import type { ReplicatedRecord } from '../../src/replication/ports';
import { FLAG_LZ4, FRAME_HEADER_BYTES, FRAME_MAGIC, FrameDecoder, FrameType, LAST_FRAME_TYPE, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, encodeFrame, encodeMeta, type Frame } from '../../src/replication/protocol';
import { Receiver } from '../../src/replication/receiver';
import { MAX_RECORDS_PER_SEGMENT, decodeSegment, encodeSegment } from '../../src/replication/segment';
import { LogCapture, compact, cutsArb, describeError, feedStream, fuzzing, mutate, mutationsArb, split, timeoutFor, type Mutation } from '../helpers/fuzz';
import { MemorySink } from '../helpers/memory-journal';

const CODES = new Set<string>(Object.values(ReplicationErrorCode));

// ---- FrameDecoder -------------------------------------------------------------------------------

interface DecodeOutcome {
  frames: Frame[];
  error?: ReplicationError;
  maxPending: number;
  largestAlloc: number;
}

function runDecoder(chunks: Buffer[]): DecodeOutcome {
  const dec = new FrameDecoder();
  const frames: Frame[] = [];
  const sink = { push: (c: Buffer) => frames.push(...dec.push(c)), get pending() { return dec.pendingBytes; } };
  return { frames, ...feedStream(chunks, sink, ReplicationError, 'FrameDecoder') };
}

function checkDecode(out: DecodeOutcome, total: number): void {
  if (out.error) assert.ok(CODES.has(out.error.code), `unknown ReplicationError code ${out.error.code}`);
  let wire = 0;
  for (const f of out.frames) {
    assert.ok(f.type >= 1 && f.type <= LAST_FRAME_TYPE, `frame type ${f.type}`);
    assert.ok(f.meta !== null && typeof f.meta === 'object' && !Array.isArray(f.meta), 'meta is a map');
    assert.ok(Buffer.isBuffer(f.payload), 'payload is bytes');
    assert.ok(f.payload.length <= MAX_PAYLOAD_BYTES);
    wire += f.wireBytes;
  }
  assert.ok(wire <= total, `frames account for ${wire} of ${total} bytes`);
  assert.ok(out.maxPending <= total, `the decoder held ${out.maxPending} of ${total} bytes`);
  // Everything the decoder allocates is bounded by its input, but an lz4 payload's output: that
  // by the most LZ4 can expand the bytes received (a size prefix past it is refused first), under
  // the cap, rounded up to the buffer pool's size class.
  const lz4Out = Math.ceil(Math.min(maxDecompressedSize(total), MAX_PAYLOAD_BYTES) / SIZE_CLASS) * SIZE_CLASS;
  assert.ok(out.largestAlloc <= Math.max(total, FRAME_HEADER_BYTES, lz4Out), `the decoder allocated ${out.largestAlloc} bytes for ${total} received`);
}

/** Whether a map anywhere in `v` has an own key that is an Object.prototype member (independent of the decoder's own check). */
function shadowsPrototype(v: unknown): boolean {
  if (v === null || typeof v !== 'object' || Buffer.isBuffer(v)) return false;
  if (Array.isArray(v)) return v.some(shadowsPrototype);
  return Object.keys(v).some((k) => Object.prototype.hasOwnProperty.call(Object.prototype, k) || shadowsPrototype((v as Record<string, unknown>)[k]));
}

/** Recompute the CRC of every whole frame in `bytes` whose header is readable (so mutations reach what the CRC protects). */
function repairCrcs(bytes: Buffer): Buffer {
  const b = Buffer.from(bytes);
  let off = 0;
  while (off + FRAME_HEADER_BYTES <= b.length) {
    const metaLen = b.readUInt32BE(off + 8);
    const payloadLen = b.readUInt32BE(off + 12);
    const end = off + FRAME_HEADER_BYTES + metaLen + payloadLen;
    if (metaLen > b.length || payloadLen > b.length || end > b.length) break;
    let crc = crc32c(b.subarray(off, off + 16));
    crc = crc32c(b.subarray(off + FRAME_HEADER_BYTES, end), crc);
    b.writeUInt32BE(crc >>> 0, off + 16);
    off = end;
  }
  return b;
}

function wire(type: FrameType, meta: Record<string, unknown>, payload?: Buffer, compress = false): Buffer {
  const f = encodeFrame(type, meta, payload, compress);
  return Buffer.concat([f.head, f.payload]);
}

test('FrameDecoder: random bytes cut anywhere give verified frames or a ReplicationError with a known code', { timeout: timeoutFor('replication/decoder-random', 2) }, (t) => {
  const f = fuzzing(t, 'replication/decoder-random');
  const byCode = new Map<string, number>();
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 4096 }).map((b) => Buffer.from(b)),
        // past the magic and version checks: a random header after a valid prefix
        fc.tuple(fc.integer({ min: 0, max: LAST_FRAME_TYPE + 1 }), fc.integer({ min: 0, max: 3 }), fc.uint8Array({ minLength: 8, maxLength: 8 }), fc.uint8Array({ maxLength: 2048 }), fc.boolean()).map(([type, flags, lens, rest, small]) => {
          const h = Buffer.alloc(FRAME_HEADER_BYTES);
          h.writeUInt32BE(FRAME_MAGIC, 0);
          h[4] = PROTOCOL_VERSION;
          h[5] = type;
          h[6] = flags;
          Buffer.from(lens).copy(h, 8);
          if (small) {
            h.writeUInt32BE(h.readUInt32BE(8) % 64, 8);
            h.writeUInt32BE(h.readUInt32BE(12) % 64, 12);
          }
          return repairCrcs(Buffer.concat([h, Buffer.from(rest)]));
        }),
      ),
      cutsArb,
      (bytes, cuts) => {
        f.hit();
        const out = runDecoder(split(bytes, cuts));
        checkDecode(out, bytes.length);
        const k = out.error?.code ?? `${out.frames.length} frames`;
        byCode.set(k, (byCode.get(k) ?? 0) + 1);
      },
    ),
    f.params,
  );
  f.report([...byCode].sort().map(([k, n]) => `${k} ${n}`).join(', '));
});

/** Meta values that survive a msgpack round trip unchanged. */
const metaValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.integer(),
    fc.constantFrom(0, -1, 2 ** 32, 2 ** 53 - 1, -(2 ** 31)),
    fc.string({ maxLength: 16 }),
    fc.boolean(),
    fc.constant(null),
    fc.uint8Array({ maxLength: 32 }).map((b) => Buffer.from(b)),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), tie('value'), { maxKeys: 4, noNullPrototype: true }),
  ),
})).value;

const metaKey = fc.constantFrom('seq', 'from', 'to', 'id', 'volume', 'offset', 'length', 'version', 'siteId', 'volumes', 'recs', 'vols', 'fromSeq', 'consistentSeq', 'zero', 'resume', 'x');
const metaArb = fc.oneof(
  { weight: 12, arbitrary: fc.dictionary(metaKey, metaValue, { maxKeys: 6, noNullPrototype: true }) },
  // now and then a field holding a map whose keys shadow Object.prototype (String() / Number() on it would throw): refused as REPL_FRAME_META
  {
    weight: 1,
    arbitrary: fc.tuple(fc.dictionary(metaKey, metaValue, { maxKeys: 4, noNullPrototype: true }), metaKey, fc.constantFrom<unknown>({ toString: 1 }, { valueOf: 'x', toString: 'y' }, [{ constructor: 1 }])).map(([m, k, v]) => ({ ...m, [k]: v })),
  },
);

const frameArb = fc.record({
  type: fc.integer({ min: 1, max: LAST_FRAME_TYPE }),
  meta: metaArb,
  payload: fc.oneof(
    fc.constant(Buffer.alloc(0)),
    fc.uint8Array({ maxLength: 3000 }).map((b) => Buffer.from(b)),
    // compressible, so `compress` really produces lz4
    fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 65, max: 20000 })).map(([v, n]) => Buffer.alloc(n, v)),
  ),
  compress: fc.boolean(),
});

test('FrameDecoder: mutated valid frame streams (CRC left or repaired) give the same outcome however they are cut, and only typed errors', { timeout: timeoutFor('replication/decoder-mutated', 5) }, (t) => {
  const f = fuzzing(t, 'replication/decoder-mutated');
  const byCode = new Map<string, number>();
  fc.assert(
    fc.property(
      fc.array(frameArb, { minLength: 1, maxLength: 5 }),
      fc.oneof({ weight: 1, arbitrary: fc.constant([] as Mutation[]) }, { weight: 6, arbitrary: mutationsArb(6) }),
      fc.boolean(),
      cutsArb,
      (frames, mutations, repair, cuts) => {
        f.hit();
        const valid = Buffer.concat(frames.map((x) => wire(x.type as FrameType, x.meta, x.payload, x.compress)));
        let bytes = mutate(valid, mutations);
        if (repair) bytes = repairCrcs(bytes);
        const whole = runDecoder([bytes]);
        const pieces = runDecoder(split(bytes, cuts));
        checkDecode(whole, bytes.length);
        checkDecode(pieces, bytes.length);
        assert.equal(pieces.error?.code, whole.error?.code, 'same error however the stream is cut');
        // push() returns nothing when it throws: whole frames that came in the same chunk as the
        // corruption are not delivered (the connection is dropped and resumed from the last ack).
        // So with an error, each cut delivers a prefix of the same frames; without one, all of them.
        if (!whole.error) assert.equal(pieces.frames.length, whole.frames.length, 'same frames however the stream is cut');
        for (let i = 0; i < Math.min(whole.frames.length, pieces.frames.length); i++) {
          assert.equal(pieces.frames[i].type, whole.frames[i].type);
          assert.ok(encodeMeta(pieces.frames[i].meta).equals(encodeMeta(whole.frames[i].meta)), `frame ${i}: meta differs between cuts`);
          assert.ok(Buffer.from(pieces.frames[i].payload).equals(Buffer.from(whole.frames[i].payload)), `frame ${i}: payload differs between cuts`);
        }
        if (mutations.length === 0 && frames.some((x) => shadowsPrototype(x.meta))) {
          assert.equal(whole.error?.code, ReplicationErrorCode.FrameMeta, 'a meta map with a key like toString / valueOf is refused');
        } else if (mutations.length === 0) {
          assert.equal(whole.error, undefined, 'an unmutated stream decodes');
          assert.equal(whole.frames.length, frames.length);
          whole.frames.forEach((g, i) => {
            assert.equal(g.type, frames[i].type);
            assert.ok(encodeMeta(g.meta).equals(encodeMeta(frames[i].meta)), `frame ${i}: meta round trip`);
            assert.ok(Buffer.from(g.payload).equals(frames[i].payload), `frame ${i}: payload round trip`);
          });
        }
        const k = `${repair ? 'repaired' : 'plain'} ${whole.error?.code ?? 'decoded'}`;
        byCode.set(k, (byCode.get(k) ?? 0) + 1);
      },
    ),
    f.params,
  );
  f.report([...byCode].sort().map(([k, n]) => `${k} ${n}`).join(', '));
});

/** A Segment frame with the lz4 flag, this payload, and a correct CRC. */
function lz4Frame(payload: Buffer): Buffer {
  const head = Buffer.from(encodeFrame(FrameType.Segment, { from: 1, to: 1 }).head);
  head[6] = FLAG_LZ4;
  head.writeUInt32BE(payload.length, 12);
  return repairCrcs(Buffer.concat([head, payload]));
}

test('FrameDecoder: lz4 payloads with a lying size prefix (0 .. 4 GiB) and a correct CRC are refused or decoded, never allocated past the cap', { timeout: timeoutFor('replication/lz4-declared', 20) }, (t) => {
  const f = fuzzing(t, 'replication/lz4-declared');
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  let decoded = 0;
  fc.assert(
    fc.property(
      fc.oneof(fc.uint8Array({ maxLength: 3000 }).map((b) => Buffer.from(b)), fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 100_000 })).map(([v, n]) => Buffer.alloc(n, v))),
      fc.oneof(
        { weight: 6, arbitrary: fc.constant('real' as const) },
        { weight: 3, arbitrary: fc.integer({ min: -3, max: 3 }) },
        { weight: 2, arbitrary: fc.constantFrom(0, 1, 0xffffffff, 0x80000000, MAX_PAYLOAD_BYTES + 1, 0x7fffffff) },
        // inside the cap but far from the truth: refused, or (within what the block could hold) allocated and still failing cleanly
        { weight: 1, arbitrary: fc.constantFrom(MAX_PAYLOAD_BYTES, 1 << 20) },
      ),
      fc.oneof({ weight: 1, arbitrary: fc.constant([] as Mutation[]) }, { weight: 2, arbitrary: mutationsArb(3) }),
      (raw, declared, mutations) => {
        f.hit();
        const z = compressSync(raw);
        const body = mutate(z.subarray(4), mutations);
        const size = declared === 'real' ? raw.length : typeof declared === 'number' && declared >= -3 && declared <= 3 ? Math.max(0, raw.length + declared) : declared;
        const prefix = Buffer.alloc(4);
        prefix.writeUInt32LE(size >>> 0, 0);
        const bytes = lz4Frame(Buffer.concat([prefix, body]));
        const out = runDecoder([bytes]);
        checkDecode(out, bytes.length);
        if (size > MAX_PAYLOAD_BYTES) assert.equal(out.error?.code, ReplicationErrorCode.FramePayload, `declared ${size} must be refused`);
        if (size > maxDecompressedSize(4 + body.length)) {
          assert.equal(out.error?.code, ReplicationErrorCode.FramePayload, `declared ${size} for a block of ${4 + body.length} bytes must be refused`);
          assert.ok(out.largestAlloc <= Math.max(bytes.length, FRAME_HEADER_BYTES), `declared ${size}: refused before its output was allocated (${out.largestAlloc} bytes)`);
        }
        if (!out.error) {
          decoded++;
          assert.equal(out.frames[0].payload.length, size, 'a decoded lz4 payload has its declared size');
          if (declared === 'real' && mutations.length === 0) assert.ok(Buffer.from(out.frames[0].payload).equals(raw), 'round trip');
        }
        peak = Math.max(peak, process.memoryUsage().rss);
      },
    ),
    f.params,
  );
  const grew = (peak - rss0) / (1 << 20);
  f.report(`${decoded} decoded; RSS grew by at most ${grew.toFixed(0)} MiB`);
  assert.ok(grew < 512, `RSS grew by ${grew.toFixed(0)} MiB while decoding lz4 payloads`);
});

// ---- decodeSegment -----------------------------------------------------------------------------

const recordArb: fc.Arbitrary<Omit<ReplicatedRecord, 'seq'>> = fc.oneof(
  fc.record({ vol: fc.constantFrom('a', 'b', 'vol1'), off: fc.integer({ min: 0, max: 1 << 20 }), n: fc.integer({ min: 1, max: 4 }) }).map(({ vol, off, n }) => ({ timeMs: 1_700_000_000_000 + off, volume: vol, op: 'write' as const, offsetBytes: off * 512, lengthBytes: n * 512, data: compact(Buffer.alloc(n * 512, n)) })),
  fc.record({ vol: fc.constantFrom('a', 'b'), off: fc.integer({ min: 0, max: 1 << 20 }), n: fc.integer({ min: 1, max: 64 }) }).map(({ vol, off, n }) => ({ timeMs: 1, volume: vol, op: 'writeSame' as const, offsetBytes: off * 512, lengthBytes: n * 512, data: compact(Buffer.alloc(512, 7)) })),
  fc.record({ vol: fc.constantFrom('a', 'b'), off: fc.integer({ min: 0, max: 1 << 20 }), n: fc.integer({ min: 1, max: 1 << 16 }) }).map(({ vol, off, n }) => ({ timeMs: 2, volume: vol, op: 'unmap' as const, offsetBytes: off * 512, lengthBytes: n * 512 })),
);

/** A structural change to a decoded segment meta (what a bit flip inside msgpack can turn a field into, and worse). */
type MetaEdit =
  | { kind: 'field'; field: 'from' | 'to' | 'vols' | 'recs' | 'coalesced'; value: unknown }
  | { kind: 'delete'; field: 'from' | 'to' | 'vols' | 'recs' }
  | { kind: 'rec'; index: number; column: number; value: unknown }
  | { kind: 'dropRec'; index: number }
  | { kind: 'dupRec'; index: number }
  | { kind: 'swapRecs'; a: number; b: number };

const oddValue = fc.oneof(
  fc.constantFrom(-1, 0, 1, 2, 1.5, NaN, Infinity, 2 ** 53, 2 ** 53 - 1, 2 ** 32, 511, 512, 513, MAX_RECORDS_PER_SEGMENT + 1, '1', '', null, true, false),
  fc.constantFrom([], [1], [[1, 2, 3, 4, 5, 6, 7]], {}, { length: 3 }),
  fc.integer({ min: -10, max: 100_000 }),
);

const metaEditArb: fc.Arbitrary<MetaEdit> = fc.oneof(
  fc.record({ kind: fc.constant('field' as const), field: fc.constantFrom('from' as const, 'to' as const, 'vols' as const, 'recs' as const, 'coalesced' as const), value: oddValue }),
  fc.record({ kind: fc.constant('delete' as const), field: fc.constantFrom('from' as const, 'to' as const, 'vols' as const, 'recs' as const) }),
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('rec' as const), index: fc.nat(), column: fc.integer({ min: 0, max: 7 }), value: oddValue }) },
  fc.record({ kind: fc.constant('dropRec' as const), index: fc.nat() }),
  fc.record({ kind: fc.constant('dupRec' as const), index: fc.nat() }),
  fc.record({ kind: fc.constant('swapRecs' as const), a: fc.nat(), b: fc.nat() }),
);

function editMeta(meta: Record<string, unknown>, edits: MetaEdit[]): Record<string, unknown> {
  const m = JSON.parse(JSON.stringify(meta, (_k, v: unknown) => v)) as Record<string, unknown>;
  for (const e of edits) {
    const recs = Array.isArray(m.recs) ? (m.recs as unknown[]) : undefined;
    switch (e.kind) {
      case 'field':
        m[e.field] = structuredClone(e.value);
        break;
      case 'delete':
        delete m[e.field];
        break;
      case 'rec':
        if (recs?.length) {
          const r = recs[e.index % recs.length];
          if (Array.isArray(r)) {
            if (e.column < r.length) r[e.column] = structuredClone(e.value);
            else r.push(structuredClone(e.value));
          }
        }
        break;
      case 'dropRec':
        if (recs?.length) recs.splice(e.index % recs.length, 1);
        break;
      case 'dupRec':
        if (recs?.length) recs.splice(e.index % recs.length, 0, JSON.parse(JSON.stringify(recs[e.index % recs.length])));
        break;
      case 'swapRecs':
        if (recs?.length) {
          const a = e.a % recs.length;
          const b = e.b % recs.length;
          [recs[a], recs[b]] = [recs[b], recs[a]];
        }
        break;
    }
  }
  return m;
}

/** What any successful decode must satisfy, whatever the input. */
function checkRecords(out: ReplicatedRecord[], meta: Record<string, unknown>, payload: Buffer): void {
  const from = meta.from as number;
  const to = meta.to as number;
  const coalesced = meta.coalesced === true;
  const vols = meta.vols as string[];
  assert.ok(out.length > 0 && out.length <= MAX_RECORDS_PER_SEGMENT);
  if (!coalesced) assert.equal(out.length, to - from + 1, 'a plain segment holds every record of its range');
  let pos = 0;
  out.forEach((r, i) => {
    assert.ok(Number.isSafeInteger(r.seq) && r.seq >= from && r.seq <= to, `seq ${r.seq} outside ${from}..${to}`);
    if (i > 0) assert.ok(r.seq > out[i - 1].seq, 'seqs ascend');
    if (!coalesced) assert.equal(r.seq, from + i);
    assert.ok(vols.includes(r.volume), `volume ${r.volume} not in vols`);
    for (const v of [r.timeMs, r.offsetBytes, r.lengthBytes]) assert.ok(Number.isSafeInteger(v) && v >= 0);
    const n = r.data?.length ?? 0;
    if (r.op === 'write') assert.equal(n, r.lengthBytes);
    else if (r.op === 'unmap') assert.equal(n, 0);
    else if (r.op === 'writeSame') assert.ok(n > 0 && r.lengthBytes % n === 0);
    else assert.fail(`op ${String(r.op)}`);
    if (r.data) assert.ok(Buffer.from(r.data).equals(payload.subarray(pos, pos + n)), 'record data is the next slice of the payload');
    pos += n;
  });
  assert.equal(out[out.length - 1].seq, to, 'the last record is the end of the range');
  assert.equal(pos, payload.length, 'the records use the whole payload');
}

function decodeOrTyped(meta: Record<string, unknown>, payload: Buffer): ReplicatedRecord[] | ReplicationError {
  try {
    return decodeSegment(meta, payload);
  } catch (e) {
    if (e instanceof ReplicationError && e.code === ReplicationErrorCode.FrameMeta) return e;
    assert.fail(`decodeSegment threw ${describeError(e)}`);
  }
}

test('decodeSegment: valid segments (through the wire, record tables as msgpack arrays or binary) decode to their records; mutated metas, tables and payloads decode consistently or throw ReplicationError(REPL_FRAME_META)', { timeout: timeoutFor('replication/segment', 3) }, (t) => {
  const f = fuzzing(t, 'replication/segment');
  let accepted = 0;
  fc.assert(
    fc.property(
      fc.array(recordArb, { minLength: 1, maxLength: 12 }),
      fc.integer({ min: 1, max: 2 ** 40 }),
      fc.constantFrom(0, 0, 1, 5),
      fc.array(metaEditArb, { maxLength: 4 }),
      fc.oneof({ weight: 3, arbitrary: fc.constant([] as Mutation[]) }, { weight: 1, arbitrary: mutationsArb(2) }),
      fc.boolean(),
      fc.oneof({ weight: 3, arbitrary: fc.constant([] as Mutation[]) }, { weight: 1, arbitrary: mutationsArb(3) }),
      (recs, start, gap, edits, payloadMutations, table, tableMutations) => {
        f.hit();
        const records: ReplicatedRecord[] = recs.map((r, i) => ({ ...r, seq: start + i }));
        // `gap` > 0: a coalesced segment whose range covers records that were dropped before the first one.
        const { meta, payload } = encodeSegment(records, gap ? { from: start - Math.min(gap, start - 1 || 0), to: start + recs.length - 1 } : undefined, undefined, { table });
        // Through the real wire (msgpack + CRC), as the receiver gets it.
        const [frame] = new FrameDecoder().push(wire(FrameType.Segment, meta, payload));
        if (edits.length === 0 && payloadMutations.length === 0 && (!table || tableMutations.length === 0)) {
          const out = decodeOrTyped(frame.meta, frame.payload);
          assert.ok(!(out instanceof ReplicationError), `a valid segment was refused: ${out instanceof Error ? out.message : ''}`);
          checkRecords(out, frame.meta, frame.payload);
          assert.deepEqual(out.map((r) => [r.seq, r.volume, r.op, r.offsetBytes, r.lengthBytes, r.data?.length ?? 0]), records.map((r) => [r.seq, r.volume, r.op, r.offsetBytes, r.lengthBytes, r.data?.length ?? 0]));
          accepted++;
          return;
        }
        const m = editMeta(frame.meta, edits);
        if (m.table instanceof Uint8Array) m.table = mutate(m.table, tableMutations);
        const p = mutate(frame.payload, payloadMutations);
        const out = decodeOrTyped(m, p);
        if (!(out instanceof ReplicationError)) {
          checkRecords(out, m, p);
          accepted++;
        }
      },
    ),
    f.params,
  );
  f.report(`${accepted} decoded`);
});

test('decodeSegment after the frame decoder: arbitrary msgpack bytes (random and mutated segment metas) as a Segment meta with a correct CRC only ever give typed errors', { timeout: timeoutFor('replication/segment-msgpack', 3) }, (t) => {
  const f = fuzzing(t, 'replication/segment-msgpack');
  let decoded = 0;
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
        fc.tuple(fc.array(recordArb, { minLength: 1, maxLength: 6 }), mutationsArb(4)).map(([recs, m]) => {
          const { meta } = encodeSegment(recs.map((r, i) => ({ ...r, seq: 10 + i })));
          return mutate(encodeMeta(meta), m);
        }),
      ),
      fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
      (metaBytes, payload) => {
        f.hit();
        const head = Buffer.alloc(FRAME_HEADER_BYTES);
        head.writeUInt32BE(FRAME_MAGIC, 0);
        head[4] = PROTOCOL_VERSION;
        head[5] = FrameType.Segment;
        head.writeUInt32BE(metaBytes.length, 8);
        head.writeUInt32BE(payload.length, 12);
        const bytes = repairCrcs(Buffer.concat([head, metaBytes, payload]));
        const out = runDecoder([bytes]);
        checkDecode(out, bytes.length);
        if (out.error) return;
        const fr = out.frames[0];
        const r = decodeOrTyped(fr.meta, fr.payload);
        if (!(r instanceof ReplicationError)) {
          checkRecords(r, fr.meta, fr.payload);
          decoded++;
        }
      },
    ),
    f.params,
  );
  f.report(`${decoded} decoded into records`);
});

// ---- The receiver's conversation --------------------------------------------------------------

const VOLUMES = [{ name: 'a', sizeBytes: 1 << 20, blockSize: 512, uuid: '11'.repeat(16) }, { name: 'b', sizeBytes: 1 << 20, blockSize: 512, uuid: '22'.repeat(16) }];

/** MemorySink, refusing records for a volume it does not hold with a typed error, as the real journal does (JOURNAL_UNKNOWN_VOLUME). */
class CheckingSink extends MemorySink {
  override async store(records: ReplicatedRecord[]): Promise<void> {
    const stray = records.find((r) => !this.image.has(r.volume));
    if (stray) throw new OffsiteError(UNKNOWN_VOLUME, `volume ${stray.volume} is not registered`);
    return super.store(records);
  }
}
const UNKNOWN_VOLUME = 'JOURNAL_UNKNOWN_VOLUME';

type Step =
  | { kind: 'segment'; n: number; offset: number; skip: number }
  | { kind: 'frame'; type: number; meta: Record<string, unknown> }
  | { kind: 'verify'; chunks: number; skew: number }
  | { kind: 'raw'; bytes: Uint8Array };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('segment' as const), n: fc.integer({ min: 1, max: 4 }), offset: fc.integer({ min: 0, max: 2040 }), skip: fc.constantFrom(0, 0, 0, 0, 1, -1) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('frame' as const),
      type: fc.constantFrom(FrameType.Ping, FrameType.Pong, FrameType.Hello, FrameType.Ack, FrameType.SyncStart, FrameType.SyncChunk, FrameType.SyncDone, FrameType.SyncHashes, FrameType.Error, FrameType.Segment, FrameType.Verify, FrameType.VerifyResult, FrameType.Repair),
      meta: metaArb,
    }),
  },
  // A well-formed online-verify probe, at the stream's point or (skew) off it.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('verify' as const), chunks: fc.integer({ min: 1, max: 16 }), skew: fc.constantFrom(0, 0, 0, 1, -1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('raw' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }) },
);

const helloArb = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Record<string, unknown>>({ version: PROTOCOL_VERSION, siteId: 'primary-x', volumes: VOLUMES }) },
  { weight: 1, arbitrary: fc.record({ version: fc.constantFrom(PROTOCOL_VERSION, 0, 2, '1'), siteId: fc.oneof(fc.string({ maxLength: 8 }), fc.integer()), volumes: fc.constantFrom<unknown>(VOLUMES, [], [{ name: 'a' }], [{ name: 'a', sizeBytes: -1 }], [null], 'x', [{ name: { toString: 1 }, sizeBytes: 1 }]) }) },
);

test('the receiver fed a Hello, then segments, stray frames and garbage (mutated, CRC left or repaired): only typed rejections, records stored strictly in order, nothing logged as an error', { timeout: timeoutFor('replication/receiver', 200) }, async (t) => {
  const f = fuzzing(t, 'replication/receiver', { timeLimitMs: 20_000 });
  const logs = new LogCapture();
  const sink = new CheckingSink();
  const receiver = new Receiver({ sink, logger: pino({ level: 'warn' }, logs), idleTimeoutMs: 10_000 });
  const { port } = await receiver.listen('127.0.0.1', 0);
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  const rejections = new Map<string, number>();
  let storedBefore = 0;
  try {
    await fc.assert(
      fc.asyncProperty(helloArb, fc.array(stepArb, { maxLength: 8 }), fc.constantFrom('none', 'none', 'plain', 'repaired') as fc.Arbitrary<'none' | 'plain' | 'repaired'>, mutationsArb(3), cutsArb, async (hello, steps, how, mutations, cuts) => {
        f.hit();
        logs.clear();
        // Build the conversation against what the sink holds now.
        let next = sink.durableSeq() + 1;
        const parts: Buffer[] = [wire(FrameType.Hello, hello)];
        for (const s of steps) {
          if (s.kind === 'segment') {
            const from = next + s.skip;
            const recs: ReplicatedRecord[] = Array.from({ length: s.n }, (_, i) => ({ seq: from + i, timeMs: 1, volume: i % 2 ? 'b' : 'a', op: 'write' as const, offsetBytes: (s.offset + i) * 512, lengthBytes: 512, data: Buffer.alloc(512, from + i) }));
            if (from < 1) continue;
            const seg = encodeSegment(recs, undefined, undefined, { table: s.n % 2 === 0 });
            parts.push(wire(FrameType.Segment, seg.meta, seg.payload, true));
            if (s.skip === 0) next = from + s.n;
          } else if (s.kind === 'frame') {
            parts.push(wire(s.type as FrameType, s.meta));
          } else if (s.kind === 'verify') {
            parts.push(wire(FrameType.Verify, { id: 1, volume: 'a', offset: 0, length: s.chunks * 65536, seq: next - 1 + s.skew }, Buffer.alloc(8 * s.chunks)));
          } else {
            parts.push(Buffer.from(s.bytes));
          }
        }
        let bytes: Buffer = Buffer.concat(parts);
        if (how !== 'none') bytes = mutate(bytes, mutations);
        if (how === 'repaired') bytes = repairCrcs(bytes);
        const sock = net.connect({ port, host: '127.0.0.1' });
        sock.on('error', () => undefined);
        sock.on('data', () => undefined);
        await new Promise<void>((r) => sock.once('connect', () => r()));
        for (const c of split(bytes, cuts)) if (c.length) sock.write(c);
        // Give the receiver time to take it in (and store), then hang up.
        const closed = new Promise<void>((r) => sock.once('close', () => r()));
        await Promise.race([closed, new Promise((r) => setTimeout(r, 15))]);
        sock.destroy();
        await closed;
        await new Promise((r) => setTimeout(r, 2));
        for (const rec of logs.records) {
          if (Number(rec.level) >= 50) assert.fail(`error-level log from the receiver: ${JSON.stringify(rec).slice(0, 1000)}`);
          if (rec.msg === 'replication frame rejected; dropping the connection') {
            const code = String((rec.err as { code?: unknown } | undefined)?.code);
            assert.ok(CODES.has(code) || code === UNKNOWN_VOLUME, `a frame was rejected with an untyped error: ${JSON.stringify(rec.err).slice(0, 500)}`);
            rejections.set(code, (rejections.get(code) ?? 0) + 1);
          }
        }
        // The sink saw every record exactly once, in order (MemorySink throws on a gap, which would be logged above).
        sink.stored.forEach((r, i) => assert.equal(r.seq, i + 1, 'records stored in order without gaps'));
        assert.deepEqual(unhandled, [], 'unhandled rejections');
      }),
      f.params,
    );
    storedBefore = sink.stored.length;
  } finally {
    process.off('unhandledRejection', onUnhandled);
    await receiver.close();
  }
  f.report(`${storedBefore} records stored; rejections ${[...rejections].sort().map(([k, n]) => `${k} ${n}`).join(', ')}`);
});
