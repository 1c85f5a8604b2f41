/** Small byte helpers shared by the layers. */

const ZEROS = Buffer.alloc(64 * 1024);

/** Every byte is zero (compared a chunk at a time with memcmp, no per-byte callback). */
export function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - i);
    if (!b.subarray(i, i + n).equals(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/** The buffers of an I/O vector from byte `skip` on (to go on after a short writev). */
export function iovFrom(iov: readonly Buffer[], skip: number): Buffer[] {
  let i = 0;
  while (skip >= iov[i].length) skip -= iov[i++].length;
  return [iov[i].subarray(skip), ...iov.slice(i + 1)];
}
