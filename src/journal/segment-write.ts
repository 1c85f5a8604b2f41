/**
 * The journal's group-commit write: seal each record (a CRC-32C over the rest of its header and
 * its data, stored in the header) and write every header and data buffer of the batch at
 * `position` with one pwritev. Native (native/records.c) when built: no Buffer per header and
 * one call per batch instead of two CRC calls per record. Otherwise the same in JavaScript.
 */
import { writevSync } from 'node:fs';
import { iovFrom } from '../common/bytes';
import { crc32c } from '../common/crc32c';
import { loadAddon } from '../common/native';

/** Where a record header keeps its checksum, and where the bytes it covers begin. */
export interface SealLayout {
  headerBytes: number;
  crcAt: number;
  crcFrom: number;
}

/** Most records one call may write (the native code's bound). */
export const MAX_BATCH_RECORDS = 1024;

export type WriteRecords = (fd: number, position: number, headers: Buffer, headerBytes: number, datas: readonly Buffer[], crcAt: number, crcFrom: number) => number;

const addon = process.env.OFFSITE_NO_RECORDS_ADDON === '1' ? undefined : loadAddon<{ writeRecords: WriteRecords }>('records');

/** The checksum of one record: its header from `crcFrom` on, then its data. */
export function recordChecksum(header: Buffer, data: Buffer, layout: SealLayout): number {
  return crc32c(data, crc32c(header.subarray(layout.crcFrom, layout.headerBytes))) >>> 0;
}

/** The JavaScript version (no addon built); the same bytes, the same errors. */
export const portableWriteRecords: WriteRecords = (fd, position, headers, headerBytes, datas, crcAt, crcFrom) => {
  const layout = { headerBytes, crcAt, crcFrom };
  const iov: Buffer[] = [];
  let total = 0;
  for (let i = 0; i < datas.length; i++) {
    const h = headers.subarray(i * headerBytes, (i + 1) * headerBytes);
    h.writeUInt32BE(recordChecksum(h, datas[i], layout), crcAt);
    iov.push(h);
    if (datas[i].length) iov.push(datas[i]);
    total += headerBytes + datas[i].length;
  }
  let written = 0;
  try {
    while (written < total) {
      const n = writevSync(fd, written ? iovFrom(iov, written) : iov, position + written);
      if (n === 0) throw Object.assign(new Error('journal segment write made no progress'), { code: 'EIO' });
      written += n;
    }
  } catch (e) {
    throw Object.assign(e as Error, { written });
  }
  return written;
};

/**
 * Seal and write `datas.length` records (headers back to back in `headers`); returns the bytes
 * written. On failure throws the system error with `written`: the bytes that reached the file.
 */
export function writeRecords(fd: number, position: number, headers: Buffer, datas: readonly Buffer[], layout: SealLayout): number {
  return (addon?.writeRecords ?? portableWriteRecords)(fd, position, headers, layout.headerBytes, datas, layout.crcAt, layout.crcFrom);
}

/** The addon's version, when built (tests compare the two). */
export const nativeWriteRecords: WriteRecords | undefined = addon?.writeRecords;
