/**
 * LZ4 payloads in lz4-napi's block format (the uncompressed size as a u32 LE, then one LZ4
 * block), into buffers from the buffer pool. A fresh buffer per replication frame (what
 * lz4-napi's compressSync / uncompressSync return) is new external memory to V8, which starts
 * a full collection for every 64 MiB of it: at replication speed the replica marked its heap
 * every 150 ms (73 full collections for 2 GiB of 128K writes). Pooled buffers are reused instead.
 * Through the lz4block addon (native/lz4block.c, liblz4) when it is built; else lz4-napi, into
 * fresh buffers. Both write and read the same format.
 */
import { compress, compressSync, uncompressSync } from 'lz4-napi';
import { payloadBuffer, releaseBuffer } from './buffer-pool';
import { loadAddon } from './native';

interface Lz4BlockAddon {
  compressBound(n: number): number;
  /** Bytes written (size prefix included), 0 when the result did not fit. */
  compressInto(src: Uint8Array, dst: Uint8Array): number;
  /** compressInto on the thread pool; neither buffer may be touched until the callback. */
  compressIntoAsync(src: Uint8Array, dst: Uint8Array, done: (bytes: number) => void): void;
  /** Bytes written, or -1 unless src is a valid block of exactly dst.length bytes. */
  decompressInto(src: Uint8Array, dst: Uint8Array): number;
}

const addon = process.env.OFFSITE_NO_LZ4BLOCK === '1' ? undefined : loadAddon<Lz4BlockAddon>('lz4block');

export const lz4BlockNative = !!addon;

/**
 * The most a block of `blockBytes` (size prefix included) can decompress to: an LZ4 sequence
 * costs at least one input byte per 255 output bytes, so no valid block expands further. A size
 * prefix past this is a lie, refused before anything is allocated for it.
 */
export function maxDecompressedSize(blockBytes: number): number {
  return Math.max(0, blockBytes - 4) * 255;
}

export interface Lz4Result {
  data: Buffer;
  /** `data` is pooled memory: its last holder may give it back with releaseBuffer. */
  pooled: boolean;
}

/** Compress `src`; undefined when the result would not be smaller than `src`. */
export function compressBlock(src: Buffer): Lz4Result | undefined {
  if (!addon) {
    const z = compressSync(src);
    return z.length < src.length ? { data: z, pooled: false } : undefined;
  }
  const out = payloadBuffer(addon.compressBound(src.length));
  return shrunk(src, out, addon.compressInto(src, out.buf));
}

/** The compressed block of `n` bytes in `out`, unless it is not smaller than `src` (then `out` goes back). */
function shrunk(src: Buffer, out: { buf: Buffer; pooled: boolean }, n: number): Lz4Result | undefined {
  if (n === 0 || n >= src.length) {
    if (out.pooled) releaseBuffer(out.buf);
    return undefined;
  }
  return { data: out.buf.subarray(0, n), pooled: out.pooled };
}

/**
 * compressBlock on the thread pool, off the event loop: for a sender whose event loop has other
 * work (a primary's shipper, next to every initiator's commands). `src` must stay unchanged
 * until this resolves.
 */
export async function compressBlockAsync(src: Buffer): Promise<Lz4Result | undefined> {
  if (!addon) {
    const z = await compress(src);
    return z.length < src.length ? { data: z, pooled: false } : undefined;
  }
  const out = payloadBuffer(addon.compressBound(src.length));
  return shrunk(src, out, await new Promise<number>((resolve) => addon.compressIntoAsync(src, out.buf, resolve)));
}

/** The size prefix of a block, or -1 when it has none. */
export function declaredSize(block: Buffer): number {
  return block.length >= 4 ? block.readUInt32LE(0) : -1;
}

/**
 * Decompress a block whose size prefix says `declared` bytes (checked by the caller against its
 * limits and maxDecompressedSize). Throws when the block is corrupt or does not decompress to
 * exactly that size.
 */
export function decompressBlock(block: Buffer, declared: number): Lz4Result {
  if (!addon) {
    const data = uncompressSync(block);
    if (data.length !== declared) throw new Error(`decompressed to ${data.length} bytes, declared ${declared}`);
    return { data, pooled: false };
  }
  const out = payloadBuffer(declared);
  if (addon.decompressInto(block, out.buf) !== declared) {
    if (out.pooled) releaseBuffer(out.buf);
    throw new Error(`not a valid LZ4 block of ${declared} bytes`);
  }
  return { data: out.buf, pooled: out.pooled };
}
