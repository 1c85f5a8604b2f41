import test from 'node:test';
import assert from 'node:assert/strict';
import { naaDesignator } from '../../src/scsi';
import { MemoryVolume } from '../helpers/memory-volume';
import { cdb10, harness, senseOf } from '../helpers/scsi-harness';

const BLOCKS = 2048;

/** EXTENDED COPY parameter list: header, identification target descriptors, one block->block segment. */
function xcopyParams(naas: Buffer[], seg: { src: number; dst: number; n: number; srcLba: number; dstLba: number }, opts: { listId?: number; nul?: boolean; luIdType?: number } = {}): Buffer {
  const tds = naas.map((naa) => {
    const d = Buffer.alloc(32);
    d[0] = 0xe4; // identification descriptor target descriptor
    d[1] = ((opts.luIdType ?? 0) << 6) | (opts.nul ? 0x20 : 0);
    d[4] = 0x01; // code set binary
    d[5] = 0x03; // association LU, designator type NAA
    d[7] = 16;
    naa.copy(d, 8);
    d.writeUIntBE(512, 29, 3); // block size
    return d;
  });
  const s = Buffer.alloc(28);
  s[0] = 0x02; // block -> block
  s.writeUInt16BE(24, 2);
  s.writeUInt16BE(seg.src, 4);
  s.writeUInt16BE(seg.dst, 6);
  s.writeUInt16BE(seg.n, 10);
  s.writeBigUInt64BE(BigInt(seg.srcLba), 12);
  s.writeBigUInt64BE(BigInt(seg.dstLba), 20);
  const hdr = Buffer.alloc(16);
  hdr[0] = opts.listId ?? 1;
  hdr.writeUInt16BE(32 * tds.length, 2);
  hdr.writeUInt32BE(28, 8);
  return Buffer.concat([hdr, ...tds, s]);
}
function xcopyCdb(len: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x83;
  c.writeUInt32BE(len, 10);
  return c;
}

test('EXTENDED COPY within one LU copies the blocks; COPY STATUS reports it', async () => {
  const h = await harness({ sizeBytes: BLOCKS * 512 });
  await h.run(cdb10(0x2a, 0, 16), { data: Buffer.alloc(16 * 512, 0x41) });
  const p = xcopyParams([naaDesignator(h.volume)], { src: 0, dst: 0, n: 16, srcLba: 0, dstLba: BLOCKS - 16 }, { listId: 7 });
  const r = await h.run(xcopyCdb(p.length), { data: p });
  assert.equal(r.status, 0, senseOf(r));
  assert.ok((await h.run(cdb10(0x28, BLOCKS - 16, 16))).dataIn!.equals(Buffer.alloc(16 * 512, 0x41)));
  const cs = await h.run([0x84, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.equal(cs.status, 0);
  assert.equal(cs.dataIn![4], 0x01); // completed without errors
  assert.equal(senseOf(await h.run([0x84, 0x00, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])), '5/24/00'); // unknown list id
});

test('EXTENDED COPY between two volumes via resolveByDesignator', async () => {
  const other = new MemoryVolume('other', BLOCKS * 512);
  await other.write(0, Buffer.alloc(4 * 512, 0x77));
  const h = await harness({ sizeBytes: BLOCKS * 512, extra: { resolveByDesignator: (naa) => (naa.equals(naaDesignator(other)) ? other : undefined) } });
  const p = xcopyParams([naaDesignator(other), naaDesignator(h.volume)], { src: 0, dst: 1, n: 4, srcLba: 0, dstLba: 100 });
  assert.equal((await h.run(xcopyCdb(p.length), { data: p })).status, 0);
  assert.ok((await h.run(cdb10(0x28, 100, 4))).dataIn!.equals(Buffer.alloc(4 * 512, 0x77)));
});

test('EXTENDED COPY errors follow libiscsi ExtendedCopy.*', async () => {
  const h = await harness({ sizeBytes: BLOCKS * 512 });
  const naa = naaDesignator(h.volume);
  const good = xcopyParams([naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 });
  assert.equal((await h.run(xcopyCdb(0))).status, 0); // parameter list length 0
  assert.equal(senseOf(await h.run(xcopyCdb(16 + 31), { data: good.subarray(0, 47) })), '5/1a/00'); // truncated target descriptor
  assert.equal(senseOf(await h.run(xcopyCdb(good.length - 1), { data: good.subarray(0, good.length - 1) })), '5/1a/00');
  const three = xcopyParams([naa, naa, naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 });
  assert.equal(senseOf(await h.run(xcopyCdb(three.length), { data: three })), '5/26/06'); // too many target descriptors
  const fc = Buffer.from(good);
  fc[16] = 0xe0;
  assert.equal(senseOf(await h.run(xcopyCdb(fc.length), { data: fc })), '5/26/07');
  const s2s = Buffer.from(good);
  s2s[48] = 0x03;
  assert.equal(senseOf(await h.run(xcopyCdb(s2s.length), { data: s2s })), '5/26/09');
  const lut = xcopyParams([naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 }, { luIdType: 3 });
  assert.equal((await h.run(xcopyCdb(lut.length), { data: lut })).status, 0); // SPC-4: LU ID TYPE ignored
  const usage = Buffer.from(good);
  usage[1] = 0x08; // LIST ID USAGE 01b reserved
  assert.equal(senseOf(await h.run(xcopyCdb(usage.length), { data: usage })), '5/26/00');
  const nul = xcopyParams([naa], { src: 0, dst: 0, n: 8, srcLba: 0, dstLba: 100 }, { nul: true });
  assert.equal(senseOf(await h.run(xcopyCdb(nul.length), { data: nul })).slice(0, 2), 'a/');
  const badIdx = xcopyParams([naa], { src: 0, dst: 1, n: 8, srcLba: 0, dstLba: 100 });
  assert.equal(senseOf(await h.run(xcopyCdb(badIdx.length), { data: badIdx })).slice(0, 2), 'a/');
  const eol = xcopyParams([naa], { src: 0, dst: 0, n: 2048, srcLba: 0, dstLba: BLOCKS - 1 });
  assert.equal(senseOf(await h.run(xcopyCdb(eol.length), { data: eol })).slice(0, 2), 'a/');
  const unknown = xcopyParams([Buffer.alloc(16, 0x61)], { src: 0, dst: 0, n: 1, srcLba: 0, dstLba: 1 });
  assert.equal(senseOf(await h.run(xcopyCdb(unknown.length), { data: unknown })), 'a/0d/02');
});

test('RECEIVE COPY RESULTS operating parameters', async () => {
  const h = await harness();
  const r = await h.run([0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
  const d = r.dataIn!;
  assert.equal(d.readUInt32BE(0), d.length - 4);
  assert.equal(d.readUInt16BE(8), 2); // MAXIMUM TARGET DESCRIPTOR COUNT
  assert.equal(d.readUInt16BE(10), 1); // MAXIMUM SEGMENT DESCRIPTOR COUNT
  assert.equal(d[43], 2);
  assert.deepEqual([...d.subarray(44)], [0x02, 0xe4]);
});
