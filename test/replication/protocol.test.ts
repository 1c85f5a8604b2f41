/** The replication frame codec: golden bytes, round trips, any split of the stream, corruption. */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { encodeFrame, FrameDecoder, FrameType, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES, SYNC_CHUNK_BYTES, verifyHashes } from '../../src/replication/protocol';
import { randomBytes } from 'node:crypto';
import { ReplicationError } from '../../src/replication/errors';

const wire = (type: FrameType, meta: Record<string, unknown>, payload?: Buffer, compress = false): Buffer => {
  const f = encodeFrame(type, meta, payload, compress);
  return Buffer.concat([f.head, f.payload]);
};

test('golden bytes of an Ack frame', () => {
  const bytes = wire(FrameType.Ack, { seq: 7 });
  const expected = Buffer.from([
    0x4f, 0x46, 0x53, 0x52, // magic 'OFSR'
    0x01, // protocol version 1
    0x04, // type Ack
    0x00, // flags: payload not compressed
    0x00, // reserved
    0x00, 0x00, 0x00, 0x06, // meta length 6
    0x00, 0x00, 0x00, 0x00, // payload length 0
  ]);
  assert.deepEqual(bytes.subarray(0, 16), expected);
  // bytes 16..19: CRC32C; then meta: msgpack fixmap(1) { fixstr(3) "seq": positive fixint 7 }
  assert.deepEqual(bytes.subarray(FRAME_HEADER_BYTES), Buffer.from([0x81, 0xa3, 0x73, 0x65, 0x71, 0x07]));
  const [frame] = new FrameDecoder().push(bytes);
  assert.equal(frame.type, FrameType.Ack);
  assert.deepEqual(frame.meta, { seq: 7 });
});

test('compressible payloads are lz4-compressed, incompressible ones sent raw, both decode', () => {
  const zeros = Buffer.alloc(128 * 1024);
  const z = encodeFrame(FrameType.Segment, { from: 1, to: 2 }, zeros, true);
  assert.ok(z.payload.length < 2048, `compressed to ${z.payload.length}`);
  const random = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24));
  const r = encodeFrame(FrameType.Segment, { from: 3, to: 3 }, random, true);
  const frames = new FrameDecoder().push(Buffer.concat([z.head, z.payload, r.head, r.payload]));
  assert.equal(frames.length, 2);
  assert.deepEqual(frames[0].payload, zeros);
  assert.equal(frames[0].rawPayloadBytes, zeros.length);
  assert.ok(frames[0].wireBytes < 4096);
  assert.deepEqual(frames[1].payload, random);
});

const frameArb = fc.record({
  type: fc.constantFrom(FrameType.Hello, FrameType.Segment, FrameType.Ack, FrameType.Ping, FrameType.SyncChunk),
  // Keys named like Object.prototype members (toString, valueOf...) are refused by the decoder (REPL_FRAME_META).
  meta: fc.dictionary(fc.string({ maxLength: 8 }).filter((k) => !(k in Object.prototype)), fc.oneof(fc.integer(), fc.string(), fc.boolean()), { maxKeys: 5, noNullPrototype: true }),
  payload: fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a)),
  compress: fc.boolean(),
});

test('property: any split of the byte stream decodes to the same frames', () => {
  fc.assert(
    fc.property(fc.array(frameArb, { minLength: 1, maxLength: 6 }), fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 20 }), (frames, cuts) => {
      const stream = Buffer.concat(frames.map((f) => wire(f.type, f.meta, f.payload, f.compress)));
      const dec = new FrameDecoder();
      const out = [];
      let pos = 0;
      for (let i = 0; pos < stream.length; i++) {
        const n = cuts[i % cuts.length];
        out.push(...dec.push(stream.subarray(pos, pos + n)));
        pos += n;
      }
      assert.equal(out.length, frames.length);
      out.forEach((f, i) => {
        assert.equal(f.type, frames[i].type);
        assert.deepEqual(f.meta, frames[i].meta);
        assert.deepEqual(f.payload, frames[i].payload);
      });
      assert.equal(dec.pendingBytes, 0);
    }),
    { numRuns: 200 },
  );
});

test('property: any flipped byte is detected, never decoded into a different frame', () => {
  fc.assert(
    fc.property(frameArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (f, at, xor) => {
      const bytes = Buffer.from(wire(f.type, f.meta, f.payload, f.compress));
      bytes[at % bytes.length] ^= xor;
      const dec = new FrameDecoder();
      try {
        const frames = dec.push(bytes);
        // A corrupted length may leave the decoder waiting for more bytes: no frame emitted.
        assert.equal(frames.length, 0);
      } catch (e) {
        assert.ok(e instanceof ReplicationError, `typed error, got ${String(e)}`);
      }
    }),
    { numRuns: 500 },
  );
});

test('oversized declared lengths are refused before allocation; a lying lz4 size prefix too', () => {
  const bytes = wire(FrameType.Segment, { a: 1 });
  bytes.writeUInt32BE(MAX_PAYLOAD_BYTES + 1, 12);
  assert.throws(() => new FrameDecoder().push(bytes), { code: 'REPL_FRAME_TOO_LARGE' });

  const z = encodeFrame(FrameType.Segment, {}, Buffer.alloc(10_000), true);
  const lying = Buffer.from(z.payload);
  lying.writeUInt32LE(0x7fffffff, 0);
  // Recompute nothing: the CRC catches it first; a forged CRC must still hit the size cap.
  const forged = encodeFrame(FrameType.Segment, {}, undefined);
  const head = Buffer.from(forged.head);
  head[6] = 1; // lz4 flag
  head.writeUInt32BE(lying.length, 12);
  const { crc32c } = require('@node-rs/crc32') as typeof import('@node-rs/crc32');
  let crc = crc32c(head.subarray(0, 16));
  crc = crc32c(head.subarray(FRAME_HEADER_BYTES), crc);
  crc = crc32c(lying, crc);
  head.writeUInt32BE(crc >>> 0, 16);
  assert.throws(() => new FrameDecoder().push(Buffer.concat([head, lying])), { code: 'REPL_FRAME_PAYLOAD' });
});

test('a decoder that failed stays failed (the connection must be dropped)', () => {
  const dec = new FrameDecoder();
  assert.throws(() => dec.push(Buffer.from('GET /status HTTP/1.1\r\nHost: x\r\n\r\n')), { code: 'REPL_FRAME_MAGIC' });
  assert.throws(() => dec.push(wire(FrameType.Ping, {})), { code: 'REPL_FRAME_MAGIC' });
});

test('verifyHashes: 8 bytes per 64 KiB chunk (the last one partial), each changed by any flipped bit of its own chunk only', () => {
  const data = randomBytes(3 * SYNC_CHUNK_BYTES + 4096);
  const h = verifyHashes(data);
  assert.equal(h.length, 4 * 8);
  assert.ok(verifyHashes(Buffer.from(data)).equals(h), 'the same bytes hash the same');
  for (const [chunk, at] of [[0, 0], [1, SYNC_CHUNK_BYTES + 12345], [3, 3 * SYNC_CHUNK_BYTES + 4095]]) {
    const d = Buffer.from(data);
    d[at] ^= 0x10;
    const g = verifyHashes(d);
    for (let i = 0; i < 4; i++) assert.equal(g.subarray(i * 8, i * 8 + 8).equals(h.subarray(i * 8, i * 8 + 8)), i !== chunk, `flip in chunk ${chunk}: hash ${i}`);
  }
  // Written where asked, into a buffer given.
  const out = Buffer.alloc(40, 0xff);
  verifyHashes(data, out, 8);
  assert.ok(out.subarray(8).equals(h));
  assert.ok(out.subarray(0, 8).equals(Buffer.alloc(8, 0xff)));
});
