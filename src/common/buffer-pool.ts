/**
 * Reusable I/O buffers. A command's data travels socket → iSCSI → SCSI → volume (writes) or
 * volume → SCSI → iSCSI → socket (reads); allocating a fresh 128 KiB buffer per command costs
 * page faults and, worse, garbage-collector work: V8 starts a full collection for every 64 MiB
 * of new buffer memory, so at 500 MB/s the heap was marked every few milliseconds (a third of
 * the machine in the write profile). The producer takes a buffer here and whoever finishes
 * with it last gives it back.
 *
 * The pool holds at most MAX_POOLED_BYTES. When a buffer comes back to a full pool, buffers of
 * the size asked for least recently make room for it: a burst of one size (a prefill's 1 MiB
 * writes, the shipper's frames) must not fill the pool for good. Before, it did: after a 1 MiB
 * prefill, every 128 KiB write of a replicated volume got a fresh buffer (page faults, garbage
 * collection) and its throughput fell from 785 to 504 MiB/s (medians of 3, same machine).
 *
 * Rules: a buffer never given back is simply garbage-collected; giving back one that did not
 * come from here is ignored. A buffer has one holder when acquired; each further
 * holder takes a reference (`retainBuffer`) and every holder gives its reference back
 * (`releaseBuffer`): the last one returns the buffer to the pool.
 */

const MAX_PER_SIZE = 256;
const MAX_POOLED_BYTES = 64 * 1024 * 1024;
const MAX_BUFFER = 4 * 1024 * 1024;

/** Free buffers of one size, and when that size was last asked for (a counter, not a clock): the oldest gives way first. */
interface SizeList {
  bufs: Buffer[];
  asked: number;
}
const free = new Map<number, SizeList>();
let asks = 0;
/**
 * How many hold a buffer handed out and not yet returned, kept on its memory (1 when acquired;
 * 0 or absent: not lent, so foreign buffers are never pooled). A property rather than a WeakSet
 * and a WeakMap: those cost a hash lookup, often a runtime call, for every command and every
 * replicated record.
 */
const HOLDERS = Symbol('offsite.bufferHolders');
type Tracked = ArrayBuffer & { [HOLDERS]?: number };
let pooledBytes = 0;
/** Poolable buffers allocated because none of their size was free, and bytes dropped to make room (metrics). */
let allocations = 0;
let evictedBytes = 0;

/** A buffer of exactly `size` bytes with undefined contents, reused when one is free. */
export function acquireBuffer(size: number): Buffer {
  if (size > MAX_BUFFER || size === 0) return Buffer.allocUnsafeSlow(size);
  let list = free.get(size);
  if (!list) free.set(size, (list = { bufs: [], asked: 0 }));
  list.asked = ++asks;
  const reused = list.bufs.pop();
  if (reused) pooledBytes -= size;
  else allocations++;
  const buf = reused ?? Buffer.allocUnsafeSlow(size);
  (buf.buffer as Tracked)[HOLDERS] = 1;
  return buf;
}

/** Pooled payload buffers come in multiples of this (payloadBuffer). */
export const SIZE_CLASS = 64 * 1024;

/**
 * A buffer of `size` bytes for a payload whose size varies (replication segments, which
 * exact-size lists would rarely match): from one size class up, a view of a pooled buffer whose
 * size is rounded up to SIZE_CLASS (given back through the view, with releaseBuffer); below, a
 * plain allocation (`pooled` false).
 */
export function payloadBuffer(size: number): { buf: Buffer; pooled: boolean } {
  if (size < SIZE_CLASS) return { buf: Buffer.allocUnsafe(size), pooled: false };
  return { buf: acquireBuffer(Math.ceil(size / SIZE_CLASS) * SIZE_CLASS).subarray(0, size), pooled: true };
}

/**
 * Give back one holder's reference to a buffer from acquireBuffer (or any view of it); the last
 * one returns it to the pool. Giving back a reference one does not hold is a bug.
 */
export function releaseBuffer(buf: Buffer): void {
  const ab = buf.buffer as Tracked;
  const holders = ab[HOLDERS];
  if (!holders) return;
  ab[HOLDERS] = holders - 1;
  if (holders > 1) return;
  const size = ab.byteLength;
  let list = free.get(size);
  if (!list) free.set(size, (list = { bufs: [], asked: 0 }));
  if (list.bufs.length >= MAX_PER_SIZE) return;
  if (pooledBytes + size > MAX_POOLED_BYTES && !makeRoom(size, list.asked)) return;
  list.bufs.push(Buffer.from(ab, 0, size));
  pooledBytes += size;
}

/**
 * Drop pooled buffers of the sizes asked for least recently, all asked for before `asked` (when
 * the returning size was), until `size` more bytes fit; false if they cannot.
 */
function makeRoom(size: number, asked: number): boolean {
  while (pooledBytes + size > MAX_POOLED_BYTES) {
    let victim: SizeList | undefined;
    for (const list of free.values()) if (list.bufs.length && list.asked < (victim?.asked ?? asked)) victim = list;
    if (!victim) return false;
    while (victim.bufs.length && pooledBytes + size > MAX_POOLED_BYTES) {
      const dropped = victim.bufs.pop()!.length;
      pooledBytes -= dropped;
      evictedBytes += dropped;
    }
  }
  return true;
}

/** One more holder of `buf` (a view of a pooled buffer, or anything else: then a no-op). */
export function retainBuffer(buf: Buffer): void {
  const ab = buf.buffer as Tracked;
  const holders = ab[HOLDERS];
  if (holders) ab[HOLDERS] = holders + 1;
}

export function poolStats(): { pooledBytes: number; sizes: number; allocations: number; evictedBytes: number; pooled: (size: number) => number } {
  return { pooledBytes, sizes: free.size, allocations, evictedBytes, pooled: (size) => free.get(size)?.bufs.length ?? 0 };
}
