/**
 * Text keys (RFC 7143 §6.1): `key=value` pairs each ended by a NUL. Parsing is strict
 * (a key appears once, names and values are bounded) and never throws anything but IscsiError.
 */
import { IscsiError, IscsiErrorCode } from './errors';

export const MAX_KEY_NAME = 63;
/** Values are at most 255 bytes, except those RFC 7143 allows up to 8192 (CHAP challenges, SendTargets, names). */
export const MAX_VALUE = 8192;

export type TextPairs = Array<[string, string]>;

const KEY_NAME = /^[A-Za-z0-9.\-+@_:]+$/;

/** Parse a data segment of text keys. Trailing bytes after the last NUL are an error. */
export function parseText(data: Buffer): TextPairs {
  const out: TextPairs = [];
  if (data.length === 0) return out;
  let s = data.toString('latin1');
  if (!s.endsWith('\0')) throw new IscsiError(IscsiErrorCode.Text, 'text data does not end with NUL');
  s = s.slice(0, -1);
  const seen = new Set<string>();
  for (const item of s.split('\0')) {
    if (item === '') continue;
    const eq = item.indexOf('=');
    if (eq <= 0) throw new IscsiError(IscsiErrorCode.Text, `malformed text key ${JSON.stringify(item.slice(0, 64))}`);
    const key = item.slice(0, eq);
    const value = Buffer.from(item.slice(eq + 1), 'latin1').toString('utf8');
    if (key.length > MAX_KEY_NAME || !KEY_NAME.test(key)) throw new IscsiError(IscsiErrorCode.Text, `invalid key name ${JSON.stringify(key.slice(0, 64))}`);
    if (value.length > MAX_VALUE) throw new IscsiError(IscsiErrorCode.Text, `value of ${key} is too long (${value.length} bytes)`);
    if (seen.has(key)) throw new IscsiError(IscsiErrorCode.Text, `key ${key} repeated`);
    seen.add(key);
    out.push([key, value]);
  }
  return out;
}

export function encodeText(pairs: TextPairs): Buffer {
  if (pairs.length === 0) return Buffer.alloc(0);
  return Buffer.from(pairs.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8');
}
