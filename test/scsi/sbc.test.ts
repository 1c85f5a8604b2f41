import test from 'node:test';
import assert from 'node:assert/strict';
import { MemoryVolume } from '../helpers/memory-volume';
import { naaDesignator } from '../../src/scsi';
import { B, cdb10, cdb16, harness, senseOf } from '../helpers/scsi-harness';
import type { WriteOptions } from '../../src/volume/volume';
import { VolumeError, VolumeErrorCode } from '../../src/volume/errors';

const BLOCKS = (8 * 1024 * 1024) / 512;

test('READ CAPACITY 10 / 16 golden bytes', async () => {
  const h = await harness();
  const r10 = await h.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...r10.dataIn!], [0, 0, 0x3f, 0xff, 0, 0, 2, 0]); // last LBA 16383, 512-byte blocks
  const r16 = await h.run([0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
  assert.deepEqual([...r16.dataIn!.subarray(0, 16)], [0, 0, 0, 0, 0, 0, 0x3f, 0xff, 0, 0, 2, 0, 0, 0, 0xc0, 0]); // LBPME | LBPRZ
  const pmi = await h.run([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]); // LBA != 0 without PMI
  assert.equal(senseOf(pmi), '5/24/00');
});

test('READ CAPACITY 10 reports FFFFFFFFh for a medium beyond 2^32 blocks', async () => {
  const big = new (class extends MemoryVolume {
    override readonly sizeBytes = 2 ** 33 * 512;
  })('big', 4096);
  const h = await harness({ volume: big });
  const r10 = await h.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(r10.dataIn!.readUInt32BE(0), 0xffffffff);
  const r16 = await h.run([0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
  assert.equal(r16.dataIn!.readBigUInt64BE(0), 2n ** 33n - 1n);
});

test('WRITE then READ round trip in every size (6/10/12/16)', async () => {
  const h = await harness();
  const data = Buffer.alloc(1024, 0xab);
  assert.equal((await h.run([0x0a, 0, 0, 10, 2, 0], { data })).status, 0); // WRITE(6) LBA 10, 2 blocks
  const r6 = await h.run([0x08, 0, 0, 10, 2, 0]);
  assert.deepEqual(r6.dataIn, data);
  for (const [w, rd] of [[0x2a, 0x28], [0xaa, 0xa8], [0x8a, 0x88]]) {
    const d = Buffer.alloc(1536, w);
    const wc = w === 0x2a ? cdb10(w, 100, 3) : w === 0xaa ? Buffer.from([w, 0, 0, 0, 0, 100, 0, 0, 0, 3, 0, 0]) : cdb16(w, 100, 3);
    const rc = rd === 0x28 ? cdb10(rd, 100, 3) : rd === 0xa8 ? Buffer.from([rd, 0, 0, 0, 0, 100, 0, 0, 0, 3, 0, 0]) : cdb16(rd, 100, 3);
    const wr = await h.run(wc, { data: d });
    assert.equal(wr.status, 0);
    assert.equal(wr.dataOutLength, 1536);
    assert.deepEqual((await h.run(rc)).dataIn, d);
  }
});

test('READ(6) with transfer length 0 reads 256 blocks', async () => {
  const h = await harness();
  const r = await h.run([0x08, 0, 0, 0, 0, 0]);
  assert.equal(r.dataIn!.length, 256 * 512);
});

test('zero-length READ/WRITE 10/16 are GOOD without data', async () => {
  const h = await harness();
  const r = await h.run(cdb10(0x28, 0, 0));
  assert.equal(r.status, 0);
  assert.equal(r.dataIn, undefined);
  assert.equal((await h.run(cdb16(0x8a, 0, 0))).status, 0);
});

test('LBA out of range: beyond end, at 2^31, at -1, and partially past the end', async () => {
  const h = await harness();
  for (const c of [cdb10(0x28, BLOCKS, 1), cdb10(0x28, 0x80000000, 1), cdb10(0x28, 0xffffffff, 1), cdb10(0x28, BLOCKS - 1, 2), cdb16(0x88, 2n ** 63n, 1), cdb16(0x88, 2n ** 64n - 1n, 1), cdb10(0x28, BLOCKS + 1, 0)]) {
    const r = await h.run(c);
    assert.equal(senseOf(r), '5/21/00', c.toString('hex'));
  }
  assert.equal((await h.run(cdb10(0x28, BLOCKS - 1, 1))).status, 0);
});

test('RDPROTECT/WRPROTECT != 0 is an invalid field (no protection information)', async () => {
  const h = await harness();
  for (let p = 1; p < 8; p++) {
    assert.equal(senseOf(await h.run(cdb10(0x28, 0, 1, p << 5))), '5/24/00');
    assert.equal(senseOf(await h.run(cdb16(0x8a, 0, 1, p << 5), { data: Buffer.alloc(512) })), '5/24/00');
  }
});

test('transfer length above the maximum is an invalid field', async () => {
  const h = await harness({ extra: { limits: { maxTransferBlocks: 8 } } });
  assert.equal(senseOf(await h.run(cdb10(0x28, 0, 9))), '5/24/00');
  assert.equal((await h.run(cdb10(0x28, 0, 8))).status, 0);
});

test('FUA and WCE=0 reach volume.write as fua: true; DPO is ignored', async () => {
  const seen: (WriteOptions | undefined)[] = [];
  const v = new (class extends MemoryVolume {
    override async write(o: number, d: Buffer, opts?: WriteOptions) {
      seen.push(opts);
      return super.write(o, d, opts);
    }
  })('v', 1024 * 1024);
  const h = await harness({ volume: v });
  await h.run(cdb10(0x2a, 0, 1, 0x08), { data: Buffer.alloc(512) }); // FUA
  await h.run(cdb10(0x2a, 0, 1, 0x10), { data: Buffer.alloc(512) }); // DPO only
  assert.deepEqual(seen, [{ fua: true }, undefined]);
});

test('writes to a read-only volume: DATA PROTECT / WRITE PROTECTED; reads still work', async () => {
  const h = await harness({ readOnly: true });
  assert.equal(senseOf(await h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512) })), '7/27/00');
  assert.equal(senseOf(await h.run(cdb16(0x93, 0, 1), { data: Buffer.alloc(512) })), '7/27/00');
  assert.equal(senseOf(await h.run(cdb10(0x41, 0, 1, 0x08))), '7/27/00'); // WRITE SAME UNMAP without data-out
  assert.equal(senseOf(await h.run(Buffer.from([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), { data: Buffer.from([0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]) })), '7/27/00');
  assert.equal((await h.run(cdb10(0x28, 0, 1))).status, 0);
});

test('short data-out for a WRITE (EDTL < transfer length) writes only the whole blocks delivered', async () => {
  const h = await harness();
  await h.run(cdb10(0x2a, 0, 2), { data: Buffer.alloc(1024, 7) });
  // Two blocks in the CDB, one block (plus a partial one) delivered: block 0 written, block 1 kept.
  const r = await h.run(cdb10(0x2a, 0, 2), { data: Buffer.alloc(700, 1) });
  assert.equal(r.status, 0);
  assert.equal(r.dataOutLength, 1024, 'the CDB length is reported so the transport can flag the overflow');
  const back = (await h.run(cdb10(0x28, 0, 2))).dataIn!;
  assert.ok(back.subarray(0, 512).every((b) => b === 1));
  assert.ok(back.subarray(512).every((b) => b === 7));
  // Nothing delivered: nothing written.
  assert.equal((await h.run(cdb10(0x2a, 1, 1), { data: Buffer.alloc(0) })).status, 0);
  assert.equal((await h.run(cdb10(0x28, 1, 1))).dataIn![0], 7);
});

test('volume errors: read failure MEDIUM ERROR 11/00, write failure 0C/00', async () => {
  const v = new (class extends MemoryVolume {
    override async read(): Promise<Buffer> {
      throw new VolumeError(VolumeErrorCode.Io, 'boom');
    }
    override async write(): Promise<void> {
      throw new VolumeError(VolumeErrorCode.Io, 'boom');
    }
  })('v', 1024 * 1024);
  const h = await harness({ volume: v });
  assert.equal(senseOf(await h.run(cdb10(0x28, 0, 1))), '3/11/00');
  assert.equal(senseOf(await h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512) })), '3/0c/00');
});

test('SYNCHRONIZE CACHE flushes; a flush error is MEDIUM ERROR / WRITE ERROR, never GOOD', async () => {
  const h = await harness();
  assert.equal((await h.run(cdb10(0x35, 0, 0))).status, 0);
  assert.equal((await h.run(cdb16(0x91, 0, 0))).status, 0);
  assert.equal(h.volume.flushes, 2);
  assert.equal(senseOf(await h.run(cdb10(0x35, BLOCKS, 1))), '5/21/00');
  const v = new (class extends MemoryVolume {
    override async flush(): Promise<void> {
      throw new VolumeError(VolumeErrorCode.Io, 'fsync failed');
    }
  })('v', 1024 * 1024);
  const bad = await harness({ volume: v });
  const r = await bad.run(cdb10(0x35, 0, 0));
  assert.equal(r.status, 2);
  assert.equal(senseOf(r), '3/0c/00');
});

test('VERIFY: BYTCHK 0 medium check, 1 compare with miscompare offset, 3 single block', async () => {
  const h = await harness();
  const data = Buffer.alloc(1024, 0x11);
  await h.run(cdb10(0x2a, 4, 2), { data });
  assert.equal((await h.run(cdb10(0x2f, 4, 2))).status, 0);
  assert.equal((await h.run(cdb10(0x2f, 4, 2, 0x02), { data })).status, 0);
  const other = Buffer.from(data);
  other[700] = 0x12;
  const r = await h.run(cdb10(0x2f, 4, 2, 0x02), { data: other });
  assert.equal(senseOf(r), 'e/1d/00');
  assert.equal(r.sense![0] & 0x80, 0x80); // INFORMATION valid
  assert.equal(r.sense!.readUInt32BE(3), 700);
  assert.equal((await h.run(cdb10(0x2f, 4, 2, 0x06), { data: Buffer.alloc(512, 0x11) })).status, 0);
  assert.equal(senseOf(await h.run(cdb10(0x2f, 4, 2, 0x04))), '5/24/00'); // BYTCHK 10b reserved
  assert.equal(senseOf(await h.run(cdb16(0x8f, BLOCKS, 1))), '5/21/00');
  assert.equal(senseOf(await h.run(cdb10(0x2f, 0, 1, 0x20))), '5/24/00'); // VRPROTECT
});

test('WRITE AND VERIFY writes durably', async () => {
  const h = await harness();
  const d = Buffer.alloc(512, 7);
  assert.equal((await h.run(cdb10(0x2e, 9, 1), { data: d })).status, 0);
  assert.deepEqual((await h.run(cdb10(0x28, 9, 1))).dataIn, d);
});

test('WRITE SAME 10/16: pattern, UNMAP with zeros, UNMAP with a non-zero block (deallocated, as libiscsi expects), NDOB, ANCHOR invalid, 0 blocks to the end, limit', async () => {
  const h = await harness({ extra: { limits: { maxWriteSameBlocks: 1 << 20 } } });
  const pat = Buffer.alloc(512, 0x5a);
  assert.equal((await h.run(cdb10(0x41, 10, 4), { data: pat })).status, 0);
  const r = (await h.run(cdb10(0x28, 10, 4))).dataIn!;
  assert.ok(r.equals(Buffer.alloc(2048, 0x5a)));
  assert.equal((await h.run(cdb16(0x93, 10, 4, 0x08), { data: Buffer.alloc(512) })).status, 0); // UNMAP with zeros: deallocated (LBPRZ)
  assert.ok((await h.run(cdb10(0x28, 10, 4))).dataIn!.equals(Buffer.alloc(2048)));
  // UNMAP with any other block: deallocated too (libiscsi's WriteSame10.UnmapUntilEnd sends 0xFF and expects zeros; LIO and tgt agree).
  await h.run(cdb10(0x41, 10, 4), { data: pat });
  assert.equal((await h.run(cdb16(0x93, 10, 4, 0x08), { data: Buffer.alloc(512, 0xab) })).status, 0);
  assert.ok((await h.run(cdb10(0x28, 10, 4))).dataIn!.equals(Buffer.alloc(2048)));
  await h.run(cdb10(0x41, 10, 4), { data: pat });
  assert.equal((await h.run(cdb16(0x93, 10, 4, 0x01))).status, 0); // NDOB
  assert.ok((await h.run(cdb10(0x28, 10, 4))).dataIn!.equals(Buffer.alloc(2048)));
  assert.equal(senseOf(await h.run(cdb16(0x93, 0, 1, 0x10), { data: pat })), '5/24/00'); // ANCHOR
  assert.equal(senseOf(await h.run(cdb16(0x93, 0, 1, 0x18), { data: pat })), '5/24/00'); // ANCHOR + UNMAP
  assert.equal((await h.run(cdb10(0x41, BLOCKS - 2, 0), { data: pat })).status, 0); // 0 blocks: to the end
  assert.ok((await h.run(cdb10(0x28, BLOCKS - 2, 2))).dataIn!.equals(Buffer.alloc(1024, 0x5a)));
  assert.equal(senseOf(await h.run(cdb10(0x41, BLOCKS, 1), { data: pat })), '5/21/00');
  assert.equal(senseOf(await h.run(cdb10(0x41, BLOCKS + 1, 0), { data: pat })), '5/21/00');
  const small = await harness({ extra: { limits: { maxWriteSameBlocks: 16 } } });
  assert.equal(senseOf(await small.run(cdb16(0x93, 0, 17), { data: pat })), '5/24/00');
  assert.equal(senseOf(await small.run(cdb16(0x93, 0, 0), { data: pat })), '5/24/00'); // to the end exceeds
});

function unmapParams(ranges: [number, number][]): Buffer {
  const b = Buffer.alloc(8 + 16 * ranges.length);
  b.writeUInt16BE(b.length - 2, 0);
  b.writeUInt16BE(16 * ranges.length, 2);
  ranges.forEach(([lba, n], i) => {
    b.writeBigUInt64BE(BigInt(lba), 8 + 16 * i);
    b.writeUInt32BE(n, 16 + 16 * i);
  });
  return b;
}
const unmapCdb = (len: number) => Buffer.from([0x42, 0, 0, 0, 0, 0, 0, len >> 8, len & 0xff, 0]);

test('UNMAP: descriptors deallocate (read zeros); validation of lengths and ranges', async () => {
  const h = await harness();
  await h.run(cdb10(0x2a, 0, 8), { data: Buffer.alloc(4096, 0xff) });
  const p = unmapParams([[0, 2], [4, 2]]);
  assert.equal((await h.run(unmapCdb(p.length), { data: p })).status, 0);
  const r = (await h.run(cdb10(0x28, 0, 8))).dataIn!;
  assert.ok(r.subarray(0, 1024).equals(Buffer.alloc(1024)));
  assert.ok(r.subarray(1024, 2048).equals(Buffer.alloc(1024, 0xff)));
  assert.ok(r.subarray(2048, 3072).equals(Buffer.alloc(1024)));
  assert.equal((await h.run(unmapCdb(0))).status, 0); // nothing to do
  assert.equal(senseOf(await h.run(unmapCdb(4), { data: Buffer.alloc(4) })), '5/1a/00');
  const oob = unmapParams([[BLOCKS - 1, 2]]);
  assert.equal(senseOf(await h.run(unmapCdb(oob.length), { data: oob })), '5/21/00');
  const lie = unmapParams([[0, 1]]);
  lie.writeUInt16BE(64, 2); // block descriptor data length beyond the parameter list
  assert.equal(senseOf(await h.run(unmapCdb(lie.length), { data: lie })), '5/1a/00');
  assert.equal(senseOf(await h.run(Buffer.from([0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0]), { data: p })), '5/24/00'); // ANCHOR
  const zero = unmapParams([]);
  assert.equal((await h.run(unmapCdb(zero.length), { data: zero })).status, 0);
});

test('GET LBA STATUS: descriptors from volume.allocation, first at the requested LBA', async () => {
  const v = new (class extends MemoryVolume {
    override async allocation(o: number, l: number) {
      return [
        { offsetBytes: 0, lengthBytes: 4096, mapped: true },
        { offsetBytes: 4096, lengthBytes: l + o - 4096, mapped: false },
      ];
    }
  })('v', 1024 * 1024);
  const h = await harness({ volume: v });
  const r = await h.run([0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0x10, 0, 0, 0]);
  const d = r.dataIn!;
  assert.equal(d.readUInt32BE(0), 4 + 32);
  assert.equal(d.readBigUInt64BE(8), 2n); // starts at LBA 2
  assert.equal(d.readUInt32BE(16), 6); // blocks 2..7 mapped
  assert.equal(d[20], 0);
  assert.equal(d.readBigUInt64BE(24), 8n);
  assert.equal(d.readUInt32BE(32), 2048 - 8);
  assert.equal(d[36], 1); // deallocated
  const oob = await h.run([0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0x10, 0, 0, 0]);
  assert.equal(senseOf(oob), '5/21/00');
});

function caw(lba: number, n: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x89;
  c.writeBigUInt64BE(BigInt(lba), 2);
  c[13] = n;
  return c;
}

test('COMPARE AND WRITE: match writes, miscompare reports the first differing byte', async () => {
  const h = await harness();
  await h.run(cdb10(0x2a, 1, 1), { data: Buffer.alloc(512, 1) });
  const ok = await h.run(caw(1, 1), { data: Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(512, 2)]) });
  assert.equal(ok.status, 0);
  assert.ok((await h.run(cdb10(0x28, 1, 1))).dataIn!.equals(Buffer.alloc(512, 2)));
  const cmp = Buffer.alloc(512, 2);
  cmp[33] = 9;
  const bad = await h.run(caw(1, 1), { data: Buffer.concat([cmp, Buffer.alloc(512, 3)]) });
  assert.equal(senseOf(bad), 'e/1d/00');
  assert.equal(bad.sense!.readUInt32BE(3), 33);
  assert.ok((await h.run(cdb10(0x28, 1, 1))).dataIn!.equals(Buffer.alloc(512, 2)));
  assert.equal(senseOf(await h.run(caw(BLOCKS, 1), { data: Buffer.alloc(1024) })), '5/21/00');
  assert.equal(senseOf(await h.run(caw(0, 1), { data: Buffer.alloc(512) })), '5/24/00'); // short data-out
  assert.equal((await h.run(caw(0, 0))).status, 0);
  assert.equal(senseOf(await h.run(caw(0, 0), { data: Buffer.alloc(256 * 1024) })), '5/24/00'); // 256 blocks wrap to 0
});

test('COMPARE AND WRITE is atomic against concurrent writes and other C&Ws', async () => {
  // A volume whose reads yield to the event loop, to give racing writes every chance.
  const v = new (class extends MemoryVolume {
    override async read(o: number, l: number) {
      await new Promise((r) => setTimeout(r, 2));
      return super.read(o, l);
    }
  })('v', 1024 * 1024);
  const h = await harness({ volume: v });
  await h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512, 0) });
  // 20 initiators each try to move the block from value k to k+1; exactly one per value wins.
  let wins = 0;
  for (let round = 0; round < 5; round++) {
    const results = await Promise.all(
      Array.from({ length: 8 }, () => h.run(caw(0, 1), { data: Buffer.concat([Buffer.alloc(512, round), Buffer.alloc(512, round + 1)]) })),
    );
    const good = results.filter((r) => r.status === 0).length;
    assert.equal(good, 1, `round ${round}`);
    wins += good;
  }
  assert.equal(wins, 5);
  // A plain write issued while a C&W is comparing lands before or after it, never in between.
  await h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512, 0) });
  const [c] = await Promise.all([
    h.run(caw(0, 1), { data: Buffer.concat([Buffer.alloc(512, 0), Buffer.alloc(512, 0xcc)]) }),
    h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512, 0xdd) }),
  ]);
  const final = (await h.run(cdb10(0x28, 0, 1))).dataIn![0];
  if (c.status === 0) assert.equal(final, 0xdd); // C&W first, then the write
  else assert.equal(final, 0xdd);
  assert.ok(c.status === 0 || senseOf(c) === 'e/1d/00');
});

test('ORWRITE ors the data into the medium', async () => {
  const h = await harness();
  await h.run(cdb10(0x2a, 3, 1), { data: Buffer.alloc(512, 0x0f) });
  assert.equal((await h.run(cdb16(0x8b, 3, 1), { data: Buffer.alloc(512, 0xf0) })).status, 0);
  assert.ok((await h.run(cdb10(0x28, 3, 1))).dataIn!.equals(Buffer.alloc(512, 0xff)));
  assert.equal(senseOf(await h.run(cdb16(0x8b, BLOCKS, 1), { data: Buffer.alloc(512) })), '5/21/00');
  assert.equal(senseOf(await h.run(cdb16(0x8b, 0, 1, 0x20), { data: Buffer.alloc(512) })), '5/24/00');
});

test('PRE-FETCH 10/16 range check', async () => {
  const h = await harness();
  assert.equal((await h.run(cdb10(0x34, 0, 10))).status, 0);
  assert.equal(senseOf(await h.run(cdb16(0x90, BLOCKS, 1))), '5/21/00');
});

test('stats count commands, bytes and sense keys', async () => {
  const h = await harness();
  await h.run(cdb10(0x2a, 0, 2), { data: Buffer.alloc(1024) });
  await h.run(cdb10(0x28, 0, 1));
  await h.run(cdb10(0x28, BLOCKS, 1), { nexus: B });
  const s = h.target.stats();
  assert.equal(s.commands.WRITE_10, 1);
  assert.equal(s.commands.READ_10, 2);
  assert.equal(s.bytesWritten, 1024);
  assert.equal(s.bytesRead, 512);
  assert.deepEqual(s.errorsBySenseKey, { ILLEGAL_REQUEST: 1 });
});

test('with WCE=0, UNMAP, WRITE SAME with UNMAP=1 and EXTENDED COPY are durable before GOOD (FUA), as WRITE is', async () => {
  const seen: { op: string; fua: boolean }[] = [];
  const v = new (class extends MemoryVolume {
    override async write(o: number, d: Buffer, opts?: WriteOptions) {
      seen.push({ op: 'write', fua: !!opts?.fua });
      return super.write(o, d, opts);
    }
    override async unmap(o: number, n: number, opts?: WriteOptions) {
      seen.push({ op: 'unmap', fua: !!opts?.fua });
      return super.unmap(o, n, opts);
    }
  })('v', 2048 * 512);
  const h = await harness({ volume: v });
  (h.target as unknown as { luns: Map<number, { mode: { wce: boolean } }> }).luns.get(0)!.mode.wce = false; // MODE SELECT: WCE=0
  assert.equal((await h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512, 1) })).status, 0);
  assert.equal((await h.run(cdb16(0x93, 8, 8, 0x08))).status, 0); // WRITE SAME(16) UNMAP=1, no data-out
  const params = Buffer.from([0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 8, 0, 0, 0, 0]); // LBA 16, 8 blocks
  assert.equal((await h.run(Buffer.from([0x42, 0, 0, 0, 0, 0, 0, 0, params.length, 0]), { data: params })).status, 0);
  // EXTENDED COPY of block 0 to block 100 within the LU.
  const td = Buffer.alloc(32);
  td[0] = 0xe4;
  td[4] = 0x01;
  td[5] = 0x03;
  td[7] = 16;
  naaDesignator(v).copy(td, 8);
  td.writeUIntBE(512, 29, 3);
  const seg = Buffer.alloc(28);
  seg[0] = 0x02;
  seg.writeUInt16BE(24, 2);
  seg.writeUInt16BE(1, 10);
  seg.writeBigUInt64BE(0n, 12);
  seg.writeBigUInt64BE(100n, 20);
  const hdr = Buffer.alloc(16);
  hdr[0] = 1;
  hdr.writeUInt16BE(td.length, 2);
  hdr.writeUInt32BE(seg.length, 8);
  const p = Buffer.concat([hdr, td, seg]);
  const xcopy = Buffer.alloc(16);
  xcopy[0] = 0x83;
  xcopy.writeUInt32BE(p.length, 10);
  const r = await h.run(xcopy, { data: p });
  assert.equal(r.status, 0, senseOf(r));
  assert.deepEqual(seen, [{ op: 'write', fua: true }, { op: 'unmap', fua: true }, { op: 'unmap', fua: true }, { op: 'write', fua: true }]);
});
