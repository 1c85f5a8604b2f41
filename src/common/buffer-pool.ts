/**
 * Reusable I/O buffers. A command's data travels socket → iSCSI → SCSI → volume (writes) or
 * volume → SCSI → iSCSI → socket (reads); allocating a fresh 128 KiB buffer per command costs
 * page faults and, worse, garbage-collector work: V8 starts a full collection for every 64 MiB
 * of new buffer memory, so at 500 MB/s the heap was marked every few milliseconds (a third of
 * the machine in the write profile). The producer takes a buffer here and whoever finishes
 * with it last gives it back.
 *
 * Rules: a buffer never given back is simply garbage-collected; giving back one that did not
 * come from here (or was kept) is ignored; `keepBuffer` takes a buffer out of the pool's care
 * for a holder whose lifetime the producer cannot see (it is then ordinary memory).
 */

const MAX_PER_SIZE = 256;
const MAX_POOLED_BYTES = 64 * 1024 * 1024;
const MAX_BUFFER = 4 * 1024 * 1024;

const free = new Map<number, Buffer[]>();
/** Buffers handed out and not yet returned (by their memory), so foreign buffers are never pooled. */
const lent = new WeakSet<ArrayBuffer>();
let pooledBytes = 0;

/** A buffer of exactly `size` bytes with undefined contents, reused when one is free. */
export function acquireBuffer(size: number): Buffer {
  if (size > MAX_BUFFER || size === 0) return Buffer.allocUnsafeSlow(size);
  const reused = free.get(size)?.pop();
  if (reused) pooledBytes -= size;
  const buf = reused ?? Buffer.allocUnsafeSlow(size);
  lent.add(buf.buffer as ArrayBuffer);
  return buf;
}

/**
 * Return a buffer from acquireBuffer (or any view of it) once nothing refers to it any more.
 * Giving one back twice is a bug: only the last holder gives it back.
 */
export function releaseBuffer(buf: Buffer): void {
  const ab = buf.buffer as ArrayBuffer;
  if (!lent.has(ab)) return;
  lent.delete(ab);
  const size = ab.byteLength;
  if (pooledBytes + size > MAX_POOLED_BYTES) return;
  let list = free.get(size);
  if (!list) free.set(size, (list = []));
  if (list.length >= MAX_PER_SIZE) return;
  list.push(Buffer.from(ab, 0, size));
  pooledBytes += size;
}

/** The caller keeps `buf` (or the buffer it is a view of) for good: it never returns to the pool. */
export function keepBuffer(buf: Buffer): void {
  lent.delete(buf.buffer as ArrayBuffer);
}

export function poolStats(): { pooledBytes: number; sizes: number } {
  return { pooledBytes, sizes: free.size };
}
