/**
 * The I/O buffer pool's holder counting: a pooled buffer goes back to the pool only when its
 * last holder gives it back, never while anyone still holds it; foreign buffers are never
 * pooled.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { SIZE_CLASS, acquireBuffer, payloadBuffer, releaseBuffer, retainBuffer } from '../../src/common/buffer-pool';

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
