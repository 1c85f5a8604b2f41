/**
 * Reusable I/O buffers for the read path. A READ's data travels volume → SCSI → iSCSI → socket;
 * allocating a fresh 128 KiB buffer per command costs page faults and garbage-collector work
 * (about an eighth of the process at 1.5 GB/s). The volume takes a buffer here, and the
 * transport gives it back once the socket has taken the bytes. A buffer never given back is
 * simply garbage-collected; giving back one that did not come from here is ignored.
 */

const MAX_PER_SIZE = 64;
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

/** Return a buffer from acquireBuffer once nothing refers to it any more. */
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

export function poolStats(): { pooledBytes: number; sizes: number } {
  return { pooledBytes, sizes: free.size };
}
