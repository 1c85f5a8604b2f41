/**
 * The I/O buffer pool's holder counting: a pooled buffer goes back to the pool only when its
 * last holder gives it back, never while anyone still holds it; foreign buffers are never
 * pooled.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { acquireBuffer, releaseBuffer, retainBuffer } from '../../src/common/buffer-pool';

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
