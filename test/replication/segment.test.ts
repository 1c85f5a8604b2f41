/**
 * The segment codec's payload gathering: data the source already read into the shipper's memory
 * is sent from there, and data anywhere else is gathered without overwriting any of it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import test from 'node:test';
import type { ReplicatedRecord } from '../../src/replication/ports';
import { decodeSegment, encodeSegment } from '../../src/replication/segment';

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
