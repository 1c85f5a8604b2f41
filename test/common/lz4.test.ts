/**
 * LZ4 payloads into pooled buffers (the lz4block addon): the same format as lz4-napi both ways
 * (a primary and a replica built with and without the addon understand each other), corrupt
 * blocks refused, and results that really are pooled memory, reused once given back.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import test from 'node:test';
import { compressSync, uncompressSync } from 'lz4-napi';
import { SIZE_CLASS, acquireBuffer, releaseBuffer } from '../../src/common/buffer-pool';
import { compressBlock, compressBlockAsync, declaredSize, decompressBlock, lz4BlockNative, maxDecompressedSize } from '../../src/common/lz4';

/** Data that compresses a lot or somewhat. */
function samples(): Buffer[] {
  const half = randomBytes(200_000);
  half.fill(0, 100_000);
  const text = Buffer.from('offsite journal record '.repeat(6000));
  return [Buffer.alloc(131072, 0xa5), half, text, Buffer.alloc(65), Buffer.alloc(4 << 20, 7)];
}

test('the lz4block addon is built and loaded', () => {
  assert.equal(lz4BlockNative, true, 'native/build/lz4block.node did not load: is liblz4 installed (make build)?');
});

test('blocks written here are read by lz4-napi, and blocks lz4-napi writes are read here', () => {
  for (const src of samples()) {
    const z = compressBlock(src);
    assert.ok(z, `${src.length} bytes that compress must compress`);
    assert.equal(z.pooled, src.length >= SIZE_CLASS, 'pooled from one size class up');
    assert.ok(z.data.length < src.length);
    assert.equal(declaredSize(z.data), src.length);
    assert.ok(uncompressSync(z.data).equals(src), 'lz4-napi reads what the addon wrote');

    const theirs = compressSync(src);
    const back = decompressBlock(theirs, declaredSize(theirs));
    assert.equal(back.pooled, src.length >= SIZE_CLASS, 'pooled from one size class up');
    assert.ok(back.data.equals(src), 'the addon reads what lz4-napi wrote');
    releaseBuffer(z.data);
    releaseBuffer(back.data);
  }
});

test('no valid block expands past maxDecompressedSize (what the decoder refuses beyond)', () => {
  for (const n of [1, 100, 65536, 1 << 20, 16 << 20]) {
    const src = Buffer.alloc(n, 9);
    for (const block of [compressSync(src), compressBlock(src)?.data]) {
      if (!block) continue;
      assert.ok(n <= maxDecompressedSize(block.length), `${n} bytes from a block of ${block.length}`);
    }
  }
});

test('data that does not shrink is left uncompressed (and lz4-napi blocks of it still read here)', () => {
  const noise = randomBytes(100_000);
  assert.equal(compressBlock(noise), undefined);
  const theirs = compressSync(noise);
  const back = decompressBlock(theirs, noise.length);
  assert.ok(back.data.equals(noise));
  releaseBuffer(back.data);
});

test('a corrupt, truncated or mis-sized block is refused', () => {
  const src = Buffer.from('offsite '.repeat(20_000));
  const z = compressSync(src);
  assert.throws(() => decompressBlock(z, src.length + 1), /not a valid LZ4 block/);
  assert.throws(() => decompressBlock(z, src.length - 1), /not a valid LZ4 block/);
  assert.throws(() => decompressBlock(z.subarray(0, z.length - 3), src.length), /not a valid LZ4 block/);
  const garbage = Buffer.concat([z.subarray(0, 4), randomBytes(z.length - 4)]);
  assert.throws(() => decompressBlock(garbage, src.length), /not a valid LZ4 block/);
  assert.throws(() => decompressBlock(Buffer.alloc(2), 0), /not a valid LZ4 block/);
});

test('results are pooled memory: given back, the next payload of its size class reuses it', () => {
  const src = Buffer.alloc(300_000, 0x5a);
  const z = compressSync(src);
  const a = decompressBlock(z, src.length);
  releaseBuffer(a.data);
  const b = decompressBlock(z, src.length);
  assert.equal(b.data.buffer, a.data.buffer, 'the released buffer is reused');
  // A size in the same 64 KiB class shares it too; a buffer still held is never handed out.
  const c = decompressBlock(compressSync(src.subarray(0, 299_000)), 299_000);
  assert.notEqual(c.data.buffer, b.data.buffer, 'still held by b: not handed out again');
  assert.ok(c.data.equals(src.subarray(0, 299_000)));
  releaseBuffer(b.data);
  releaseBuffer(c.data);
  const held = acquireBuffer(c.data.buffer.byteLength);
  assert.ok(held.buffer === b.data.buffer || held.buffer === c.data.buffer, 'both went back to the pool');
  releaseBuffer(held);
});

test('compressBlockAsync (on the thread pool) writes what compressBlock writes, several at once, and leaves noise uncompressed', async () => {
  const srcs = samples();
  const results = await Promise.all(srcs.map((src) => compressBlockAsync(src)));
  results.forEach((z, i) => {
    assert.ok(z, `${srcs[i].length} bytes that compress must compress`);
    const sync = compressBlock(srcs[i])!;
    assert.ok(z.data.equals(sync.data), 'the same block as compressBlock');
    assert.ok(uncompressSync(z.data).equals(srcs[i]), 'lz4-napi reads it');
    releaseBuffer(z.data);
    releaseBuffer(sync.data);
  });
  assert.equal(await compressBlockAsync(randomBytes(100_000)), undefined);
});
