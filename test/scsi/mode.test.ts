import test from 'node:test';
import assert from 'node:assert/strict';
import { B, cdb10, harness, senseOf } from '../helpers/scsi-harness';

test('MODE SENSE(6) all pages: header, block descriptor, caching page with WCE', async () => {
  const h = await harness();
  const d = (await h.run([0x1a, 0, 0x3f, 0, 0xff, 0])).dataIn!;
  assert.equal(d[0], d.length - 1); // MODE DATA LENGTH
  assert.deepEqual([...d.subarray(0, 12)], [
    d.length - 1,
    0x00, // medium type
    0x10, // device-specific: DPOFUA, not write protected
    0x08, // block descriptor length
    0x00, 0x00, 0x40, 0x00, // number of blocks 16384
    0x00, 0x00, 0x02, 0x00, // density 0, block length 512
  ]);
  const pages = new Map<number, Buffer>();
  for (let o = 12; o < d.length; o += 2 + d[o + 1]) pages.set(d[o] & 0x3f, d.subarray(o, o + 2 + d[o + 1]));
  assert.deepEqual([...pages.keys()], [0x01, 0x08, 0x0a, 0x1c]);
  assert.equal(pages.get(0x08)![2] & 0x04, 0x04); // WCE
  assert.equal(pages.get(0x0a)!.length, 12);
});

test('MODE SENSE(10) with LLBAA gives a long block descriptor; DBD removes it', async () => {
  const h = await harness();
  const d = (await h.run([0x5a, 0x10, 0x08, 0, 0, 0, 0, 0, 0xff, 0])).dataIn!;
  assert.equal(d.readUInt16BE(0), d.length - 2);
  assert.equal(d[4] & 1, 1); // LONGLBA
  assert.equal(d.readUInt16BE(6), 16);
  assert.equal(d.readBigUInt64BE(8), 16384n);
  assert.equal(d.readUInt32BE(20), 512);
  assert.equal(d[24], 0x08);
  const nodb = (await h.run([0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 0xff, 0])).dataIn!;
  assert.equal(nodb.readUInt16BE(6), 0);
  assert.equal(nodb[8], 0x08);
});

test('MODE SENSE page control: changeable, default; saved is not supported; unknown page invalid', async () => {
  const h = await harness();
  const ch = (await h.run([0x1a, 0x08, 0x40 | 0x0a, 0, 0xff, 0])).dataIn!;
  assert.deepEqual([...ch.subarray(4)], [0x0a, 0x0a, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0]); // D_SENSE, SWP changeable
  const df = (await h.run([0x1a, 0x08, 0x80 | 0x08, 0, 0xff, 0])).dataIn!;
  assert.equal(df[4 + 2] & 0x04, 0x04);
  assert.equal(senseOf(await h.run([0x1a, 0x08, 0xc0 | 0x08, 0, 0xff, 0])), '5/39/00');
  assert.equal(senseOf(await h.run([0x1a, 0x08, 0x33, 0, 0xff, 0])), '5/24/00');
  const trunc = (await h.run([0x1a, 0, 0x3f, 0, 4, 0])).dataIn!;
  assert.equal(trunc.length, 4);
});

async function controlPage(h: Awaited<ReturnType<typeof harness>>) {
  const d = (await h.run([0x1a, 0x08, 0x0a, 0, 0xff, 0])).dataIn!;
  return Buffer.from(d.subarray(4));
}

test('MODE SELECT(6): SWP write-protects, D_SENSE switches sense format, others get MODE PARAMETERS CHANGED', async () => {
  const h = await harness();
  const page = await controlPage(h);
  page[4] |= 0x08; // SWP
  const param = Buffer.concat([Buffer.from([0, 0, 0, 0]), page]);
  const r = await h.run([0x15, 0x10, 0, 0, param.length, 0], { data: param });
  assert.equal(r.status, 0);
  assert.equal(senseOf(await h.run(cdb10(0x2a, 0, 1), { data: Buffer.alloc(512) })), '7/27/00');
  assert.equal((await h.run(cdb10(0x28, 0, 1))).status, 0);
  const ms = (await h.run([0x1a, 0, 0x3f, 0, 0xff, 0])).dataIn!;
  assert.equal(ms[2] & 0x80, 0x80); // WP
  assert.equal(senseOf(await h.run([0, 0, 0, 0, 0, 0], { nexus: B })), '6/2a/01');
  page[4] &= ~0x08;
  page[2] |= 0x04; // D_SENSE
  await h.run([0x15, 0x10, 0, 0, param.length, 0], { data: Buffer.concat([Buffer.from([0, 0, 0, 0]), page]) });
  const bad = await h.run(cdb10(0x28, 0xffffff, 1));
  assert.equal(bad.sense![0], 0x72);
  assert.equal(senseOf(bad), '5/21/00');
});

test('MODE SELECT rejects changes to non-changeable fields, SP=1, and bad block descriptors', async () => {
  const h = await harness();
  const page = await controlPage(h);
  page[3] = 0x00; // QUEUE ALGORITHM MODIFIER is not changeable
  const p = Buffer.concat([Buffer.from([0, 0, 0, 0]), page]);
  assert.equal(senseOf(await h.run([0x15, 0x10, 0, 0, p.length, 0], { data: p })), '5/26/00');
  assert.equal(senseOf(await h.run([0x15, 0x11, 0, 0, p.length, 0], { data: p })), '5/24/00');
  const bd = Buffer.from([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0]); // block length 4096
  assert.equal(senseOf(await h.run([0x15, 0x10, 0, 0, bd.length, 0], { data: bd })), '5/26/00');
  assert.equal((await h.run([0x15, 0x10, 0, 0, 0, 0])).status, 0);
});

test('MODE SELECT(10) turning WCE off makes writes FUA', async () => {
  const h = await harness();
  const d = (await h.run([0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 0xff, 0])).dataIn!;
  const page = Buffer.from(d.subarray(8));
  page[2] &= ~0x04;
  const p = Buffer.concat([Buffer.alloc(8), page]);
  assert.equal((await h.run([0x55, 0x10, 0, 0, 0, 0, 0, 0, p.length, 0], { data: p })).status, 0);
  const after = (await h.run([0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 0xff, 0])).dataIn!;
  assert.equal(after[8 + 2] & 0x04, 0);
});
