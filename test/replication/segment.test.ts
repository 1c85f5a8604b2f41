/**
 * The segment codec: its two record tables (msgpack arrays for every replica, binary for those
 * that announce it) carry the same records, and its payload gathering sends data the source
 * already read into the shipper's memory from there, gathering data anywhere else without
 * overwriting any of it. (Mutated segments: test/fuzz/replication.test.ts.)
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import test from 'node:test';
import type { ReplicatedRecord } from '../../src/replication/ports';
import { ReplicationError } from '../../src/replication/errors';
import { MAX_RECORDS_PER_SEGMENT, TABLE_ENTRY_BYTES, decodeSegment, encodeSegment, maxRecordsPerSegment } from '../../src/replication/segment';
import { FrameDecoder, FrameType, MAX_META_BYTES, encodeFrame } from '../../src/replication/protocol';

const KiB = 1024;

const record = (seq: number, data: Buffer): ReplicatedRecord => ({ seq, timeMs: 1_700_000_000_000 + seq, volume: 'v', op: 'write', offsetBytes: seq * 8 * KiB, lengthBytes: data.length, data });

/** The records decoded from the segment equal the originals' contents. */
function roundTrips(records: ReplicatedRecord[], expected: Buffer[], meta: Record<string, unknown>, payload: Buffer): void {
  const back = decodeSegment(meta, payload);
  assert.deepEqual(back.map((r) => r.seq), records.map((r) => r.seq));
  back.forEach((r, i) => assert.ok(r.data!.equals(expected[i]), `record ${r.seq} data`));
}

test('encodeSegment sends data laid out in its scratch memory from there, and gathers any other layout intact', () => {
  const contents = [randomBytes(4 * KiB), randomBytes(128 * KiB), randomBytes(8 * KiB)];
  const total = contents.reduce((n, d) => n + d.length, 0);
  const scratchMem = Buffer.alloc(256 * KiB);
  const scratch = (n: number) => scratchMem.subarray(0, n);

  // Read in place, one after another from the start: no copy.
  let at = 0;
  const inPlace = contents.map((d, i) => {
    const view = scratchMem.subarray(at, at + d.length);
    d.copy(view);
    at += d.length;
    return record(i + 1, view);
  });
  const a = encodeSegment(inPlace, undefined, scratch);
  assert.equal(a.payload.buffer, scratchMem.buffer);
  assert.equal(a.payload.byteOffset, 0);
  assert.equal(a.payload.length, total);
  roundTrips(inPlace, contents, a.meta, a.payload);

  // In the scratch memory but not in order from its start: gathered elsewhere, nothing overwritten.
  at = 64 * KiB;
  const shuffled = contents.map((d, i) => {
    const view = scratchMem.subarray(at, at + d.length);
    d.copy(view);
    at += d.length;
    return record(i + 1, view);
  });
  const reordered = [shuffled[2], shuffled[0], shuffled[1]].map((r, i) => ({ ...r, seq: i + 1 }));
  const b = encodeSegment(reordered, undefined, scratch);
  assert.notEqual(b.payload.buffer, scratchMem.buffer);
  roundTrips(reordered, [contents[2], contents[0], contents[1]], b.meta, b.payload);

  // Elsewhere: copied into the scratch memory.
  const own = contents.map((d, i) => record(i + 1, Buffer.from(d)));
  const c = encodeSegment(own, undefined, scratch);
  assert.equal(c.payload.buffer, scratchMem.buffer);
  roundTrips(own, contents, c.meta, c.payload);
});

test('binary and msgpack record tables carry the same records through the wire, coalesced ranges and big numbers included', () => {
  const records: ReplicatedRecord[] = [
    { seq: 2 ** 40 + 3, timeMs: 1_800_000_000_123, volume: 'db-log', op: 'write', offsetBytes: 2 ** 45 + 4096, lengthBytes: 8192, data: randomBytes(8192) },
    { seq: 2 ** 40 + 5, timeMs: 1_800_000_000_124, volume: 'db-data', op: 'writeSame', offsetBytes: 0, lengthBytes: 2 ** 36, data: Buffer.alloc(512, 7) },
    { seq: 2 ** 40 + 9, timeMs: 1_800_000_000_125, volume: 'db-log', op: 'unmap', offsetBytes: 512, lengthBytes: 2 ** 33 },
  ];
  const range = { from: 2 ** 40 + 1, to: 2 ** 40 + 9 }; // coalesced: records 1, 2, 4, 6-8 were dropped
  const plain = encodeSegment(records, range);
  assert.ok(Array.isArray(plain.meta.recs) && plain.meta.table === undefined, 'msgpack arrays unless asked');
  const binary = encodeSegment(records, range, undefined, { table: true });
  assert.equal(binary.meta.recs, undefined);
  assert.equal(binary.meta.table!.length, 3 * TABLE_ENTRY_BYTES);
  for (const { meta, payload } of [plain, binary]) {
    const head = encodeFrame(FrameType.Segment, meta, payload, true);
    const [frame] = new FrameDecoder().push(Buffer.concat([head.head, head.payload]));
    const back = decodeSegment(frame.meta, frame.payload);
    assert.deepEqual(back.map(({ data, ...r }) => r), records.map(({ data, ...r }) => r));
    back.forEach((r, i) => assert.ok((r.data ?? Buffer.alloc(0)).equals(records[i].data ?? Buffer.alloc(0))));
  }
  // Both tables, or neither: refused.
  for (const meta of [{ ...binary.meta, recs: plain.meta.recs }, { ...binary.meta, table: undefined }]) {
    assert.throws(() => decodeSegment(meta, binary.payload), (e) => e instanceof ReplicationError && e.code === 'REPL_FRAME_META');
  }
  // A reserved byte set: refused.
  const t = Buffer.from(binary.meta.table!);
  t[7] = 1;
  assert.throws(() => decodeSegment({ ...binary.meta, table: t }, binary.payload), /reserved/);
});

test('a segment of as many records as the limit allows fits in a frame and decodes, in either record table, however large its numbers', () => {
  // Every number but the small indexes as large as the msgpack table packs it (9 bytes, uint64), eight
  // volumes with the longest names, and no data (UNMAPs: nothing else bounds their count).
  const vols = Array.from({ length: 8 }, (_, i) => `${i}`.padEnd(63, 'x'));
  for (const table of [false, true]) {
    const n = maxRecordsPerSegment({ table });
    assert.ok(n <= MAX_RECORDS_PER_SEGMENT);
    const from = 2 ** 52;
    const records: ReplicatedRecord[] = Array.from({ length: n }, (_, i) => ({ seq: from + i, timeMs: 1_800_000_000_000 + i, volume: vols[i % vols.length], op: 'unmap', offsetBytes: 2 ** 50 + i * 4096, lengthBytes: 2 ** 40 + 4096 }));
    const { meta, payload } = encodeSegment(records, undefined, undefined, { table });
    const head = encodeFrame(FrameType.Segment, meta, payload);
    const metaBytes = head.head.length - 20;
    assert.ok(metaBytes <= MAX_META_BYTES - 64 * KiB, `${table ? 'binary' : 'msgpack'} table: meta of ${metaBytes} bytes leaves slack below ${MAX_META_BYTES}`);
    const [frame] = new FrameDecoder().push(Buffer.concat([head.head, head.payload]));
    const back = decodeSegment(frame.meta, frame.payload);
    assert.equal(back.length, n);
    assert.deepEqual(back[n - 1], { ...records[n - 1], data: undefined });
  }
});
