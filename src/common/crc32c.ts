/**
 * CRC-32C (Castagnoli): iSCSI digests, journal records, replication frames. From ISA-L through
 * the crc32c addon when it is built (about 8x faster here), else from @node-rs/crc32. Both give
 * the standard value and chain: crc32c(b, crc32c(a)) === crc32c(Buffer.concat([a, b])).
 */
import { crc32c as portable } from '@node-rs/crc32';
import { loadAddon } from './native';

const addon = loadAddon<{ crc32c(data: Uint8Array, initial?: number): number }>('crc32c');

export const crc32cNative = !!addon;

export const crc32c: (data: Uint8Array, initial?: number) => number = addon
  ? addon.crc32c
  : (data, initial) => portable(data as Buffer, initial) >>> 0;
