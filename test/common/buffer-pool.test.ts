/**
 * The I/O buffer pool's holder counting: a pooled buffer goes back to the pool only when its
 * last holder gives it back, never while anyone still holds it; foreign buffers are never
 * pooled.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { SIZE_CLASS, acquireBuffer, payloadBuffer, poolStats, releaseBuffer, retainBuffer } from '../../src/common/buffer-pool';

// A size no other code in this process uses, so the pool's list for it is ours alone.
const SIZE = 12345;

test('a buffer returns to the pool only when its last holder releases it', () => {
  const a = acquireBuffer(SIZE);
  retainBuffer(a.subarray(10, 20)); // a second holder, through a view
  releaseBuffer(a); // the first holder is done
  const b = acquireBuffer(SIZE);
  assert.notEqual(b.buffer, a.buffer, 'still held: not handed out again');
  releaseBuffer(a.subarray(0, 1)); // the second holder is done
  const c = acquireBuffer(SIZE);
  assert.equal(c.buffer, a.buffer, 'released by every holder: reused');
  releaseBuffer(b);
  releaseBuffer(c);
});

test('foreign buffers never enter the pool', () => {
  const foreign = Buffer.allocUnsafeSlow(SIZE);
  releaseBuffer(foreign);
  retainBuffer(foreign);
  for (let i = 0; i < 4; i++) assert.notEqual(acquireBuffer(SIZE).buffer, foreign.buffer);
});

test('payload buffers: pooled and rounded up to the size class from one class up, plain below', () => {
  const small = payloadBuffer(SIZE_CLASS - 1);
  assert.equal(small.pooled, false);
  assert.equal(small.buf.length, SIZE_CLASS - 1);
  // 3 size classes and a bit: a size no other test here uses.
  const size = 3 * SIZE_CLASS + 17;
  const a = payloadBuffer(size);
  assert.equal(a.pooled, true);
  assert.equal(a.buf.length, size);
  assert.equal(a.buf.buffer.byteLength, 4 * SIZE_CLASS);
  releaseBuffer(a.buf);
  const b = payloadBuffer(4 * SIZE_CLASS - 5); // same class
  assert.equal(b.buf.buffer, a.buf.buffer, 'given back through its view: reused for the same class');
  releaseBuffer(b.buf);
});

test('a full pool makes room for the size in use by dropping the size asked for least recently', () => {
  // Fill the pool with a burst of one size (as a 1 MiB prefill does), then work with another.
  const BURST = 1024 * 1024 - 4096; // sizes no other test here uses
  const WORK = 128 * 1024 + 512;
  const burst = Array.from({ length: 96 }, () => acquireBuffer(BURST));
  for (const b of burst) releaseBuffer(b);
  const full = poolStats().pooledBytes;
  const burstPooled = poolStats().pooled(BURST);
  assert.ok(full > 60 * 1024 * 1024, `the burst filled the pool (${full} bytes)`);
  const work = Array.from({ length: 8 }, () => acquireBuffer(WORK));
  for (const w of work) releaseBuffer(w);
  assert.equal(poolStats().pooled(WORK), 8, 'the size in use is pooled despite the full pool');
  assert.ok(poolStats().pooled(BURST) < burstPooled, 'the burst size gave way');
  assert.ok(poolStats().pooledBytes <= 64 * 1024 * 1024, 'the cap holds');
  // Reused, not reallocated.
  const again = acquireBuffer(WORK);
  assert.ok(work.some((w) => w.buffer === again.buffer));
  releaseBuffer(again);
  // A size asked for more recently than the one coming back is not dropped for it.
  const newer = acquireBuffer(WORK);
  releaseBuffer(newer);
  const before = poolStats().pooled(WORK);
  const old = Array.from({ length: 4 }, () => acquireBuffer(BURST));
  acquireBuffer(WORK); // WORK asked for after BURST
  for (const o of old) releaseBuffer(o);
  assert.ok(poolStats().pooled(WORK) >= before - 1, 'the more recently asked size kept its buffers');
});
