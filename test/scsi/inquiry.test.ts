import test from 'node:test';
import assert from 'node:assert/strict';
import { naaDesignator } from '../../src/scsi';
import { A, TARGET_NAME, harness, senseOf } from '../helpers/scsi-harness';

test('standard INQUIRY: golden header bytes, identification, version descriptors', async () => {
  const h = await harness();
  const r = await h.run([0x12, 0, 0, 0x01, 0x04, 0]); // INQUIRY, allocation length 260
  assert.equal(r.status, 0);
  const d = r.dataIn!;
  assert.equal(d.length, 96);
  assert.deepEqual([...d.subarray(0, 8)], [
    0x00, // PQ 0, PDT 0 (direct access block device)
    0x00, // RMB 0
    0x06, // VERSION SPC-4
    0x12, // HISUP | RESPONSE DATA FORMAT 2
    91, // ADDITIONAL LENGTH = 96 - 5
    0x18, // TPGS 01b (implicit ALUA) | 3PC
    0x00,
    0x02, // CMDQUE
  ]);
  assert.equal(d.subarray(8, 16).toString('ascii'), 'OFFSITE ');
  assert.equal(d.subarray(16, 32).toString('ascii'), 'VOLUME          ');
  assert.equal(d.subarray(32, 36).toString('ascii'), '0001');
  assert.deepEqual([...d.subarray(58, 66)], [0x00, 0xa0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xc0]); // SAM-5 iSCSI SPC-4 SBC-3
});

test('INQUIRY honours the allocation length and rejects EVPD=0 with a page code', async () => {
  const h = await harness();
  const r = await h.run([0x12, 0, 0, 0, 5, 0]);
  assert.equal(r.dataIn!.length, 5);
  const bad = await h.run([0x12, 0, 0x80, 0, 0xff, 0]);
  assert.equal(bad.status, 2);
  assert.equal(senseOf(bad), '5/24/00');
  assert.deepEqual([...bad.sense!.subarray(15, 18)], [0xc0, 0x00, 0x02]); // C/D=1, byte 2
});

test('INQUIRY on a LUN that does not exist: PQ 3 / PDT 1Fh; other commands LOGICAL UNIT NOT SUPPORTED', async () => {
  const h = await harness();
  const r = await h.run([0x12, 0, 0, 0, 36, 0], { lun: 5 });
  assert.equal(r.status, 0);
  assert.equal(r.dataIn![0], 0x7f);
  const t = await h.run([0x00, 0, 0, 0, 0, 0], { lun: 5 });
  assert.equal(senseOf(t), '5/25/00');
  const rl = await h.run([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], { lun: 5 });
  assert.equal(rl.status, 0);
  assert.deepEqual([...rl.dataIn!], [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
});

test('VPD 0x00 lists pages in ascending order and every listed page is served', async () => {
  const h = await harness();
  const r = await h.run([0x12, 1, 0x00, 0, 0xff, 0]);
  const pages = [...r.dataIn!.subarray(4)];
  assert.deepEqual(pages, [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  for (const p of pages) {
    const pr = await h.run([0x12, 1, p, 0, 0xff, 0]);
    assert.equal(pr.status, 0, `page ${p}`);
    assert.equal(pr.dataIn![1], p);
    assert.equal(pr.dataIn!.readUInt16BE(2) + 4, pr.dataIn!.length);
  }
  const missing = await h.run([0x12, 1, 0x99, 0, 0xff, 0]);
  assert.equal(senseOf(missing), '5/24/00');
});

test('VPD 0x80 serial is the volume uuid in hex', async () => {
  const h = await harness();
  const r = await h.run([0x12, 1, 0x80, 0, 0xff, 0]);
  assert.equal(r.dataIn!.subarray(4).toString('ascii'), h.volume.uuid.toString('hex'));
});

test('VPD 0x83: NAA 6 LU designator, relative port, port group, SCSI names', async () => {
  const h = await harness();
  const r = await h.run([0x12, 1, 0x83, 0x01, 0x00, 0]);
  const d = r.dataIn!;
  const descs: { codeSet: number; piv: number; assoc: number; type: number; value: Buffer }[] = [];
  for (let o = 4; o < d.length; ) {
    const len = d[o + 3];
    descs.push({ codeSet: d[o] & 0x0f, piv: d[o + 1] >> 7, assoc: (d[o + 1] >> 4) & 3, type: d[o + 1] & 0x0f, value: d.subarray(o + 4, o + 4 + len) });
    o += 4 + len;
  }
  const naa = descs[0];
  assert.deepEqual([naa.codeSet, naa.assoc, naa.type, naa.value.length], [1, 0, 3, 16]);
  assert.equal(naa.value[0] >> 4, 6); // NAA IEEE Registered Extended
  assert.deepEqual(naa.value, naaDesignator(h.volume));
  assert.deepEqual(naaDesignator(h.volume), naaDesignator(h.volume)); // stable
  const rtp = descs.find((x) => x.type === 4)!;
  assert.equal(rtp.value.readUInt16BE(2), A.relativeTargetPortId);
  const tpg = descs.find((x) => x.type === 5)!;
  assert.equal(tpg.value.readUInt16BE(2), 1);
  const names = descs.filter((x) => x.type === 8).map((x) => [x.assoc, x.value.toString('utf8').replace(/\0+$/, '')]);
  assert.deepEqual(names, [[2, TARGET_NAME], [1, `${TARGET_NAME},t,0x0001`]]);
  for (const x of descs.filter((y) => y.type === 8)) assert.equal(x.value.length % 4, 0);
});

test('NAA designators differ between volumes', async () => {
  const a = await harness();
  const b = await harness();
  assert.notDeepEqual(naaDesignator(a.volume), naaDesignator(b.volume));
});

test('VPD 0xB0 block limits, 0xB1 non-rotating, 0xB2 thin provisioning bits', async () => {
  const h = await harness();
  const bl = (await h.run([0x12, 1, 0xb0, 0, 0xff, 0])).dataIn!;
  assert.equal(bl[3], 0x3c);
  assert.equal(bl[5], 255); // MAXIMUM COMPARE AND WRITE LENGTH
  assert.equal(bl.readUInt32BE(8), 65536); // MAXIMUM TRANSFER LENGTH: 32 MiB of 512-byte blocks
  assert.ok(bl.readUInt32BE(20) > 0 && bl.readUInt32BE(20) <= 1024 * 1024); // MAXIMUM UNMAP LBA COUNT
  assert.ok(bl.readUInt32BE(24) > 0); // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
  assert.ok(bl.readBigUInt64BE(36) >= 65536n); // MAXIMUM WRITE SAME LENGTH
  const bdc = (await h.run([0x12, 1, 0xb1, 0, 0xff, 0])).dataIn!;
  assert.equal(bdc.readUInt16BE(4), 1);
  const lbp = (await h.run([0x12, 1, 0xb2, 0, 0xff, 0])).dataIn!;
  assert.deepEqual([...lbp], [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]); // LBPU LBPWS LBPWS10 LBPRZ, thin
});

test('REPORT TARGET PORT GROUPS: one active/optimized group with our port', async () => {
  const h = await harness();
  const r = await h.run([0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.equal(r.status, 0);
  assert.deepEqual([...r.dataIn!], [0, 0, 0, 12, 0x80, 0x01, 0, 1, 0, 0x02, 0, 1, 0, 0, 0, 1]);
});

test('REPORT LUNS lists LUN 0 in peripheral addressing; SELECT REPORT 1 gives none', async () => {
  const h = await harness();
  const r = await h.run([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual([...r.dataIn!], [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const wk = await h.run([0xa0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual([...wk.dataIn!], [0, 0, 0, 0, 0, 0, 0, 0]);
  const bad = await h.run([0xa0, 0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.equal(senseOf(bad), '5/24/00');
});

test('unsupported opcode: INVALID COMMAND OPERATION CODE', async () => {
  const h = await harness();
  const r = await h.run([0xc0, 0, 0, 0, 0, 0]);
  assert.equal(senseOf(r), '5/20/00');
  // an unsupported service action of a supported opcode is an invalid field (SPC-4 §4.2.5.1)
  const sa = await h.run([0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
  assert.equal(senseOf(sa), '5/24/00');
});
