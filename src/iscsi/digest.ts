/** CRC32C header and data digests (RFC 7143 §13.1): four bytes, least significant byte first. */
import { crc32c } from '../common/crc32c';

const ZERO_PAD = Buffer.alloc(4);

export function digestOf(parts: readonly Buffer[], padding = 0): number {
  let crc = 0;
  for (const p of parts) if (p.length) crc = crc32c(p, crc);
  if (padding) crc = crc32c(ZERO_PAD.subarray(0, padding), crc);
  return crc >>> 0;
}

export function writeDigest(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value >>> 0, 0);
  return b;
}

export function readDigest(b: Buffer, offset = 0): number {
  return b.readUInt32LE(offset);
}
