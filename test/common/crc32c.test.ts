/**
 * CRC-32C: the ISA-L addon (what `make build` makes and the appliance uses) gives the standard
 * value, chains like the portable package, and agrees with it on every length and alignment.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import test from 'node:test';
import { crc32c as portable } from '@node-rs/crc32';
import { crc32c, crc32cNative } from '../../src/common/crc32c';

test('the ISA-L addon is built and loaded', () => {
  assert.equal(crc32cNative, true, 'native/build/crc32c.node did not load: is libisal installed (make build)?');
});

test('standard check value and RFC 7143 vectors', () => {
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  // RFC 7143 appendix B.4: 32 bytes of zeros, of ones, incrementing, decrementing.
  assert.equal(crc32c(Buffer.alloc(32, 0)), 0x8a9136aa);
  assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e);
  assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i))), 0x113fdb5c);
  assert.equal(crc32c(Buffer.alloc(0)), 0);
});

test('agrees with the portable package on every length and alignment, chained or whole', () => {
  const data = randomBytes(300_000);
  for (const len of [0, 1, 3, 7, 8, 15, 16, 63, 64, 255, 256, 4096, 4097, 131072, 262147]) {
    for (const at of [0, 1, 5]) {
      const b = data.subarray(at, at + len);
      const whole = crc32c(b);
      assert.equal(whole, portable(b) >>> 0, `len ${len} at ${at}`);
      const cut = len >> 1;
      assert.equal(crc32c(b.subarray(cut), crc32c(b.subarray(0, cut))), whole, `chained, len ${len} at ${at}`);
      assert.equal(crc32c(b.subarray(cut), 0x12345678), portable(b.subarray(cut), 0x12345678) >>> 0, `initial value, len ${len}`);
    }
  }
});
