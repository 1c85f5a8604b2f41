/**
 * PduReader, the receive state machine: any split of a valid byte stream (with or without
 * header and data digests, with AHS, with padding) gives back exactly the PDUs that were framed;
 * bad digests, oversized data segments and garbage end in an IscsiError with the right code,
 * never in a generic exception. Streams are framed here from the RFC (test/helpers/iscsi-wire),
 * not with src/iscsi's own code.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { IscsiError, IscsiErrorCode } from '../../src/iscsi/errors';
import type { Pdu } from '../../src/iscsi/pdu';
import { PduReader } from '../../src/iscsi/reader';
import { crc, le32, pad4 } from '../helpers/iscsi-wire';

const RUNS = Number(process.env.FC_RUNS ?? 300);

interface Framed {
  bhs: Buffer;
  ahs: Buffer;
  data: Buffer;
}

interface Options {
  headerDigest: boolean;
  dataDigest: boolean;
  /** Padding content (RFC 7143 says zero; the digest covers whatever is sent). */
  padByte?: number;
}

const framedPdu = (maxData: number): fc.Arbitrary<Framed> =>
  fc
    .record({
      head: fc.uint8Array({ minLength: 48, maxLength: 48 }),
      ahsWords: fc.integer({ min: 0, max: 6 }),
      data: fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ minLength: 1, maxLength: 8 }), fc.uint8Array({ minLength: 1, maxLength: maxData })),
    })
    .chain(({ head, ahsWords, data }) =>
      fc.uint8Array({ minLength: ahsWords * 4, maxLength: ahsWords * 4 }).map((ahs) => {
        const bhs = Buffer.from(head);
        bhs[4] = ahsWords; // TotalAHSLength in 4-byte words
        bhs[5] = (data.length >>> 16) & 0xff; // DataSegmentLength, 24 bits big-endian
        bhs[6] = (data.length >>> 8) & 0xff;
        bhs[7] = data.length & 0xff;
        return { bhs, ahs: Buffer.from(ahs), data: Buffer.from(data) };
      }),
    );

/** BHS, AHS, header digest over both, data, padding, data digest over data+padding (RFC 7143 §11.2, §13.1). */
function encode(p: Framed, o: Options): Buffer {
  const parts = [p.bhs, p.ahs];
  if (o.headerDigest) parts.push(le32(crc(p.bhs, p.ahs)));
  if (p.data.length) {
    const pad = Buffer.alloc(pad4(p.data.length), o.padByte ?? 0);
    parts.push(p.data, pad);
    if (o.dataDigest) parts.push(le32(crc(p.data, pad)));
  }
  return Buffer.concat(parts);
}

/** Cut `bytes` at the given positions (any order, duplicates allowed). */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(prev, c));
    prev = c;
  }
  return out;
}

const show = (p: { bhs: Buffer; ahs?: Buffer; data: Buffer }) => ({ bhs: p.bhs.toString('hex'), ahs: p.ahs && p.ahs.length ? p.ahs.toString('hex') : '', data: p.data.toString('hex') });

function collect(max: number, o: Options): { reader: PduReader; got: Pdu[] } {
  const got: Pdu[] = [];
  const reader = new PduReader(max, (pdu) => got.push(pdu));
  reader.headerDigest = o.headerDigest;
  reader.dataDigest = o.dataDigest;
  return { reader, got };
}

/** Push every chunk; return the error the reader threw (if any) and at which chunk. */
function feed(reader: PduReader, chunks: Buffer[]): { error?: unknown; at: number } {
  for (let i = 0; i < chunks.length; i++) {
    try {
      reader.push(chunks[i]);
    } catch (e) {
      return { error: e, at: i };
    }
  }
  return { at: chunks.length };
}

function assertIscsiError(e: unknown, code: string): void {
  assert.ok(e instanceof IscsiError, `expected an IscsiError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  assert.equal(e.code, code);
}

const options = fc.record({ headerDigest: fc.boolean(), dataDigest: fc.boolean(), padByte: fc.constantFrom(0, 0xff, 0x5a) });

test('a stream of valid PDUs split at arbitrary byte boundaries decodes to the same PDUs', () => {
  fc.assert(
    fc.property(fc.array(framedPdu(3000), { minLength: 1, maxLength: 8 }), options, fc.array(fc.nat(), { maxLength: 40 }), (pdus, o, cuts) => {
      const stream = Buffer.concat(pdus.map((p) => encode(p, o)));
      const { reader, got } = collect(3000, o);
      const r = feed(reader, split(stream, cuts));
      assert.equal(r.error, undefined);
      assert.deepEqual(got.map(show), pdus.map(show));
      assert.equal(reader.pending, 0, 'nothing left over');
      assert.equal(reader.count, pdus.length);
    }),
    { numRuns: RUNS },
  );
});

test('reads that land straight in the data segment (directTarget, then landed) mixed with pushed chunks decode to the same PDUs', () => {
  fc.assert(
    fc.property(fc.array(framedPdu(3000), { minLength: 1, maxLength: 8 }), options, fc.array(fc.nat({ max: 4000 }), { minLength: 1, maxLength: 60 }), fc.nat({ max: 600 }), (pdus, o, sizes, min) => {
      const stream = Buffer.concat(pdus.map((p) => encode(p, o)));
      const { reader, got } = collect(3000, o);
      let off = 0;
      let direct = 0;
      for (let i = 0; off < stream.length; i++) {
        const want = Math.max(1, sizes[i % sizes.length]);
        const view = reader.directTarget(min);
        if (view) {
          assert.ok(view.length >= min && view.length > 0);
          // The socket fills at most the view; whatever arrived is copied there by the "kernel".
          const n = Math.min(want, view.length, stream.length - off);
          stream.copy(view, 0, off, off + n);
          reader.landed(n);
          direct += n;
          off += n;
        } else {
          const n = Math.min(want, stream.length - off);
          reader.push(stream.subarray(off, off + n));
          off += n;
        }
      }
      assert.deepEqual(got.map(show), pdus.map(show));
      assert.equal(reader.pending, 0);
      // Only data-segment bytes may land directly.
      assert.ok(direct <= pdus.reduce((t, p) => t + p.data.length + pad4(p.data.length), 0));
    }),
    { numRuns: RUNS },
  );
});

test('directTarget offers only the data segment, and only while at least `min` bytes of it are missing', () => {
  const p: Framed = { bhs: Buffer.alloc(48), ahs: Buffer.alloc(0), data: Buffer.alloc(1000, 7) };
  p.bhs[7] = 0xe8; // 1000 bytes
  p.bhs[6] = 0x03;
  const bytes = encode(p, { headerDigest: true, dataDigest: true });
  const { reader, got } = collect(3000, { headerDigest: true, dataDigest: true });
  assert.equal(reader.directTarget(1), undefined, 'not in the BHS');
  reader.push(bytes.subarray(0, 48));
  assert.equal(reader.directTarget(1), undefined, 'not in the header digest');
  reader.push(bytes.subarray(48, 52 + 100));
  assert.equal(reader.directTarget(901), undefined, '900 bytes missing');
  const view = reader.directTarget(900)!;
  assert.equal(view.length, 900);
  assert.throws(() => reader.landed(901));
  bytes.copy(view, 0, 152, 152 + 900);
  reader.landed(900);
  assert.equal(reader.directTarget(1), undefined, 'not in the data digest');
  reader.push(bytes.subarray(1052));
  assert.equal(got.length, 1);
  assert.deepEqual(got[0].data, p.data);
});

test('byte-at-a-time feeding: each PDU appears exactly when its last byte arrives, pending counts the rest', () => {
  fc.assert(
    fc.property(fc.array(framedPdu(200), { minLength: 1, maxLength: 4 }), options, (pdus, o) => {
      const encoded = pdus.map((p) => encode(p, o));
      const ends: number[] = [];
      let total = 0;
      for (const e of encoded) ends.push((total += e.length));
      const stream = Buffer.concat(encoded);
      const { reader, got } = collect(200, o);
      for (let i = 0; i < stream.length; i++) {
        reader.push(stream.subarray(i, i + 1));
        const complete = ends.filter((end) => end <= i + 1).length;
        assert.equal(got.length, complete, `after byte ${i + 1}`);
        const lastEnd = complete ? ends[complete - 1] : 0;
        assert.equal(reader.pending, i + 1 - lastEnd, `pending after byte ${i + 1}`);
      }
      assert.deepEqual(got.map(show), pdus.map(show));
    }),
    { numRuns: Math.ceil(RUNS / 3) },
  );
});

test('digests switched on from the callback apply from the next PDU on, however the stream is split (the login → full feature transition)', () => {
  fc.assert(
    fc.property(
      fc.array(framedPdu(500), { minLength: 1, maxLength: 3 }),
      fc.array(framedPdu(500), { minLength: 1, maxLength: 3 }),
      fc.boolean(),
      fc.boolean(),
      fc.array(fc.nat(), { maxLength: 20 }),
      (before, after, hd, dd, cuts) => {
        const on: Options = { headerDigest: hd, dataDigest: dd };
        const stream = Buffer.concat([...before.map((p) => encode(p, { headerDigest: false, dataDigest: false })), ...after.map((p) => encode(p, on))]);
        const got: Pdu[] = [];
        const reader = new PduReader(500, (pdu) => {
          got.push(pdu);
          if (got.length === before.length) {
            reader.headerDigest = hd;
            reader.dataDigest = dd;
          }
        });
        assert.equal(feed(reader, split(stream, cuts)).error, undefined);
        assert.deepEqual(got.map(show), [...before, ...after].map(show));
      },
    ),
    { numRuns: Math.ceil(RUNS / 3) },
  );
});

test('a corrupted header digest is an ISCSI_HEADER_DIGEST error after the PDUs before it, and nothing after it is delivered', () => {
  fc.assert(
    fc.property(
      fc.array(framedPdu(300), { maxLength: 3 }),
      framedPdu(300),
      fc.array(framedPdu(300), { maxLength: 2 }),
      fc.boolean(),
      // A byte of the BHS outside the length fields (8..47), of the AHS, or of the digest itself.
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      fc.array(fc.nat(), { maxLength: 20 }),
      (before, bad, after, dd, where, xor, cuts) => {
        const o: Options = { headerDigest: true, dataDigest: dd };
        const badBytes = encode(bad, o);
        const targets = [...Array.from({ length: 40 }, (_, i) => 8 + i), ...Array.from({ length: bad.ahs.length + 4 }, (_, i) => 48 + i)];
        badBytes[targets[where % targets.length]] ^= xor;
        const stream = Buffer.concat([...before.map((p) => encode(p, o)), badBytes, ...after.map((p) => encode(p, o))]);
        const { reader, got } = collect(300, o);
        const r = feed(reader, split(stream, cuts));
        assertIscsiError(r.error, IscsiErrorCode.HeaderDigest);
        assert.deepEqual(got.map(show), before.map(show));
        // The reader stays failed: more bytes give the same error, never a PDU.
        assert.throws(() => reader.push(encode(before[0] ?? bad, o)), (e: unknown) => e === r.error);
        assert.equal(got.length, before.length);
      },
    ),
    { numRuns: RUNS },
  );
});

test('a corrupted data segment, padding or data digest is an ISCSI_DATA_DIGEST error', () => {
  fc.assert(
    fc.property(
      fc.array(framedPdu(300), { maxLength: 3 }),
      framedPdu(300).filter((p) => p.data.length > 0),
      fc.boolean(),
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      fc.array(fc.nat(), { maxLength: 20 }),
      (before, bad, hd, where, xor, cuts) => {
        const o: Options = { headerDigest: hd, dataDigest: true };
        const badBytes = encode(bad, o);
        const dataStart = 48 + bad.ahs.length + (hd ? 4 : 0);
        // Anywhere in data + padding + digest.
        badBytes[dataStart + (where % (badBytes.length - dataStart))] ^= xor;
        const stream = Buffer.concat([...before.map((p) => encode(p, o)), badBytes]);
        const { reader, got } = collect(300, o);
        const r = feed(reader, split(stream, cuts));
        assertIscsiError(r.error, IscsiErrorCode.DataDigest);
        assert.deepEqual(got.map(show), before.map(show));
      },
    ),
    { numRuns: RUNS },
  );
});

test('without data digests the padding content is ignored, and a PDU without data carries no data digest', () => {
  const data = Buffer.from('abcde');
  const bhs = Buffer.alloc(48);
  bhs[7] = data.length;
  const empty = Buffer.alloc(48);
  empty[0] = 0x3c;
  const { reader, got } = collect(8192, { headerDigest: false, dataDigest: true });
  // PDU 1: 5 data bytes, 3 pad bytes, digest; PDU 2: no data, so no digest follows its BHS.
  reader.push(Buffer.concat([bhs, data, Buffer.alloc(3), le32(crc(data, Buffer.alloc(3))), empty]));
  assert.deepEqual(got.map(show), [show({ bhs, data }), show({ bhs: empty, data: Buffer.alloc(0) })]);
  const plain = collect(8192, { headerDigest: false, dataDigest: false });
  plain.reader.push(Buffer.concat([bhs, data, Buffer.from([1, 2, 3])]));
  assert.equal(plain.got[0].data.toString(), 'abcde');
});

test('a data segment longer than the limit is ISCSI_PDU_TOO_LARGE as soon as the BHS is in, before any data is buffered', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 1 << 20 }), fc.integer({ min: 1, max: 0xffffff }), options, (max, excess, o) => {
      const dlen = Math.min(0xffffff, max + excess);
      fc.pre(dlen > max);
      const bhs = Buffer.alloc(48);
      bhs[0] = 0x01;
      bhs[5] = dlen >>> 16;
      bhs[6] = (dlen >>> 8) & 0xff;
      bhs[7] = dlen & 0xff;
      const { reader, got } = collect(max, o);
      reader.push(bhs.subarray(0, 47));
      let err: unknown;
      try {
        reader.push(bhs.subarray(47));
      } catch (e) {
        err = e;
      }
      assertIscsiError(err, IscsiErrorCode.PduTooLarge);
      assert.equal(got.length, 0);
      assert.ok(reader.pending <= 48, `pending ${reader.pending}`);
    }),
    { numRuns: RUNS },
  );
  // The boundary: exactly the limit is accepted.
  const { reader, got } = collect(1024, { headerDigest: false, dataDigest: false });
  const bhs = Buffer.alloc(48);
  bhs.writeUIntBE(1024, 5, 3);
  reader.push(Buffer.concat([bhs, Buffer.alloc(1024, 7)]));
  assert.equal(got.length, 1);
  assert.equal(got[0].data.length, 1024);
});

test('garbage never makes the reader throw anything but an IscsiError with a stream code', () => {
  const codes = new Set<string>([IscsiErrorCode.HeaderDigest, IscsiErrorCode.DataDigest, IscsiErrorCode.PduTooLarge]);
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 4096 }), options, fc.integer({ min: 0, max: 8192 }), fc.array(fc.nat(), { maxLength: 30 }), (bytes, o, max, cuts) => {
      const { reader } = collect(max, o);
      const r = feed(reader, split(Buffer.from(bytes), cuts));
      if (r.error !== undefined) {
        assert.ok(r.error instanceof IscsiError, `threw ${String(r.error)}`);
        assert.ok(codes.has(r.error.code), r.error.code);
      }
    }),
    { numRuns: RUNS },
  );
  // With header digests on, 48 bytes of garbage are caught by the digest (a fixed example: an HTTP request).
  const http = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n'.padEnd(60, ' '));
  http[4] = http[5] = http[6] = http[7] = 0; // no AHS and no data segment: only the digest can catch it
  const { reader } = collect(8192, { headerDigest: true, dataDigest: false });
  assert.throws(() => reader.push(http), (e: unknown) => e instanceof IscsiError && e.code === IscsiErrorCode.HeaderDigest);
});
