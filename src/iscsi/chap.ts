/**
 * CHAP for iSCSI login (RFC 7143 §12.1.3, RFC 1994): MD5 only (CHAP_A=5). Binary values are
 * `0x` hex or `0b` base64. Pure functions; the login state machine holds the exchange state.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

export const CHAP_MD5 = 5;
export const CHALLENGE_BYTES = 16;
/** Longest binary value we decode (RFC 7143 allows challenges up to 1024 bytes). */
export const MAX_BINARY = 1024;

export function decodeBinary(v: string): Buffer | undefined {
  if (/^0[xX][0-9a-fA-F]+$/.test(v)) {
    let hex = v.slice(2);
    if (hex.length % 2) hex = `0${hex}`;
    if (hex.length / 2 > MAX_BINARY) return undefined;
    return Buffer.from(hex, 'hex');
  }
  if (/^0[bB][A-Za-z0-9+/]+={0,2}$/.test(v)) {
    const b = Buffer.from(v.slice(2), 'base64');
    return b.length > MAX_BINARY || b.length === 0 ? undefined : b;
  }
  return undefined;
}

export const encodeBinary = (b: Buffer): string => `0x${b.toString('hex')}`;

/** MD5(id || secret || challenge) (RFC 1994 §4.1). */
export function chapResponse(id: number, secret: string, challenge: Buffer): Buffer {
  return createHash('md5').update(Buffer.from([id & 0xff])).update(Buffer.from(secret, 'utf8')).update(challenge).digest();
}

export function chapVerify(id: number, secret: string, challenge: Buffer, response: Buffer): boolean {
  const expect = chapResponse(id, secret, challenge);
  return response.length === expect.length && timingSafeEqual(expect, response);
}

export function newChallenge(): { id: number; challenge: Buffer } {
  const r = randomBytes(CHALLENGE_BYTES + 1);
  return { id: r[0], challenge: r.subarray(1) };
}
