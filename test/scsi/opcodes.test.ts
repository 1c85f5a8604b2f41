import test from 'node:test';
import assert from 'node:assert/strict';
import { harness, senseOf } from '../helpers/scsi-harness';

function rsoc(options: number, opcode = 0, sa = 0, rctd = false): Buffer {
  const c = Buffer.alloc(12);
  c[0] = 0xa3;
  c[1] = 0x0c;
  c[2] = (rctd ? 0x80 : 0) | options;
  c[3] = opcode;
  c.writeUInt16BE(sa, 4);
  c.writeUInt32BE(65535, 6);
  return c;
}

test('REPORT SUPPORTED OPERATION CODES: all commands, each one reportable and consistent (libiscsi OneCommand)', async () => {
  const h = await harness();
  const all = (await h.run(rsoc(0))).dataIn!;
  const len = all.readUInt32BE(0);
  assert.equal(len + 4, all.length);
  const seen: { op: number; sa: number; servactv: boolean; cdbLen: number }[] = [];
  for (let o = 4; o < all.length; o += 8) {
    assert.equal(all[o + 5] & 0x02, 0); // no CTDP without RCTD
    seen.push({ op: all[o], sa: all.readUInt16BE(o + 2), servactv: (all[o + 5] & 1) === 1, cdbLen: all.readUInt16BE(o + 6) });
  }
  assert.ok(seen.some((x) => x.op === 0x28));
  assert.ok(seen.some((x) => x.op === 0x9e && x.sa === 0x10 && x.servactv));
  for (const x of seen) {
    const one = await h.run(rsoc(x.servactv ? 2 : 1, x.op, x.sa));
    assert.equal(one.status, 0, `${x.op.toString(16)}/${x.sa}`);
    const d = one.dataIn!;
    assert.equal(d[1] & 0x07, 0x03); // supported
    assert.equal(d.readUInt16BE(2), x.cdbLen);
    assert.equal(d[4], x.op); // CDB USAGE DATA[0] == opcode
    if (x.servactv) assert.equal(d[5] & 0x1f, x.sa);
    assert.equal(d[4 + x.cdbLen - 1], 0x07); // CONTROL byte usage
    const wrong = await h.run(rsoc(x.servactv ? 1 : 2, x.op, x.sa));
    assert.equal(senseOf(wrong), '5/24/00');
  }
});

test('REPORT SUPPORTED OPERATION CODES with RCTD: timeouts descriptors of length 0x0a', async () => {
  const h = await harness();
  const all = (await h.run(rsoc(0, 0, 0, true))).dataIn!;
  for (let o = 4; o < all.length; o += 20) {
    assert.equal(all[o + 5] & 0x02, 0x02);
    assert.equal(all.readUInt16BE(o + 8), 0x0a);
  }
  const one = (await h.run(rsoc(1, 0x28, 0, true))).dataIn!;
  assert.equal(one[1] & 0x80, 0x80);
  assert.equal(one.readUInt16BE(4 + 10), 0x0a);
});

test('REPORT SUPPORTED OPERATION CODES: unsupported opcode reports SUPPORT 001b; bad option is invalid', async () => {
  const h = await harness();
  const d = (await h.run(rsoc(1, 0xc5))).dataIn!;
  assert.deepEqual([...d], [0, 0x01, 0, 0]);
  assert.equal(senseOf(await h.run(rsoc(5))), '5/24/00');
});
