/**
 * src/iscsi/session.ts over a real socket: an in-process IscsiServer in front of a MemoryVolume
 * target, driven by the raw initiator (test/helpers/raw-initiator) with hand-made PDUs. What
 * libiscsi and the integration tests cannot send: Data-Out that ends short, overlaps or skips
 * bytes, commands out of CmdSN order, and task management naming commands behind a CmdSN gap.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { parseSense } from '../../src/scsi/sense';
import { cdb as CDB, dataOut, scsiCommand, tmfRequest } from '../helpers/iscsi-wire';
import { pattern, RawInitiator, type Received } from '../helpers/raw-initiator';
import { RawTarget } from '../helpers/raw-target';

const TARGET = 'iqn.2026-11.dev.offsite:session-test';
const KiB = 1024;
const OP = { ScsiResponse: 0x21, TmfResponse: 0x22, R2T: 0x31, Reject: 0x3f } as const;
const TMF = { AbortTask: 1, AbortTaskSet: 2 } as const;
const STATUS_CHECK_CONDITION = 0x02;
const ABORTED_COMMAND = 0x0b;
const INCORRECT_AMOUNT_OF_DATA = 0x0c0d;
const FUNCTION_COMPLETE = 0;
/** How long a test waits for an answer that must not come. */
const SILENCE_MS = 400;

let t: RawTarget;

before(async () => {
  t = await RawTarget.start(TARGET, { sizeBytes: 4 * 1024 * KiB });
});

after(() => t?.close());

/** A new session (each its own ISID); `keys` override the raw initiator's operational keys. */
const session = (keys: Record<string, string> = {}): Promise<RawInitiator> => t.session('session', 0, keys);

const response = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.ScsiResponse && p.hdr.itt === itt, ms);

/** Whether a SCSI Response for `itt` arrives within SILENCE_MS. */
async function answered(s: RawInitiator, itt: number): Promise<boolean> {
  return response(s, itt, SILENCE_MS).then(() => true, () => false);
}

/** Whether a PDU matching `pred` was received (or arrives within `ms`). */
async function got(s: RawInitiator, pred: (p: Received) => boolean, ms = 50): Promise<boolean> {
  return s.next(pred, ms).then(() => true, () => false);
}

async function medium(lba: number, bytes: number): Promise<Buffer> {
  return t.h.volume.read(lba * 512, bytes);
}

/** A WRITE(10) of `edtl` bytes at `lba` with no immediate data; its data is up to the test. */
function writeCommand(s: RawInitiator, itt: number, lba: number, edtl: number, o: { cmdSN?: number; final?: boolean; data?: Buffer } = {}): void {
  const cmdSN = o.cmdSN ?? s.cmdSN++;
  s.send(scsiCommand({ itt, edtl, write: true, final: o.final, cmdSN, expStatSN: s.expStatSN, cdb: CDB.write10(lba, edtl / 512) }, o.data?.length ?? 0), o.data);
}

function testUnitReady(s: RawInitiator, itt: number, cmdSN: number): void {
  s.send(scsiCommand({ itt, edtl: 0, cmdSN, expStatSN: s.expStatSN, cdb: CDB.testUnitReady() }, 0));
}

function sendData(s: RawInitiator, itt: number, ttt: number, dataSN: number, offset: number, data: Buffer, final: boolean): void {
  s.send(dataOut({ final, itt, ttt, expStatSN: s.expStatSN, dataSN, bufferOffset: offset }, data.length), data);
}

function assertIncorrectAmount(rsp: Received): void {
  assert.equal(rsp.hdr.response, 0);
  assert.equal(rsp.hdr.status, STATUS_CHECK_CONDITION);
  const sense = parseSense(rsp.data.subarray(2, 2 + rsp.data.readUInt16BE(0)));
  assert.equal(sense.key, ABORTED_COMMAND);
  assert.equal(sense.ascq, INCORRECT_AMOUNT_OF_DATA);
}

// ---- Data-Out: in order, each byte once, as much as was asked ---------------------------------

test('an R2T answered short (F bit after 512 of 8192 bytes): CHECK CONDITION INCORRECT AMOUNT OF DATA, nothing written (not even another session\'s bytes from the buffer pool), the session goes on', async () => {
  const keys = { ImmediateData: 'No', InitialR2T: 'Yes' };
  // Another session's writes leave 8 KiB buffers with its data in the pool.
  const other = await session(keys);
  const secret = pattern(8 * KiB, 4242);
  for (let i = 0; i < 4; i++) assert.equal((await other.write10(100 + 16 * i, secret)).status, 0);

  const s = await session(keys);
  const before = await medium(1000, 8 * KiB);
  writeCommand(s, 0x777, 1000, 8 * KiB);
  const r2t = await s.next((p) => p.hdr.opcode === OP.R2T && p.hdr.itt === 0x777);
  assert.equal(r2t.hdr.desiredLength, 8 * KiB);
  sendData(s, 0x777, r2t.hdr.ttt!, 0, 0, Buffer.alloc(512, 0xaa), true);
  assertIncorrectAmount(await response(s, 0x777));
  assert.ok((await medium(1000, 8 * KiB)).equals(before), 'a WRITE missing 7.5 KiB of its data reached the medium');

  sendData(s, 0x777, r2t.hdr.ttt!, 1, 512, Buffer.alloc(512, 0xbb), false); // late data for the failed task: discarded
  const data = pattern(8 * KiB, 7);
  assert.equal((await s.write10(1000, data)).status, 0);
  assert.ok((await s.read10(1000, 16)).data.equals(data));
});

test('a Data-Out repeating bytes inside its R2T (offset 0 twice, as many bytes as asked in all): the connection is dropped and nothing is written', async () => {
  const s = await session({ ImmediateData: 'No', InitialR2T: 'Yes' });
  const before = await medium(1100, 8 * KiB);
  writeCommand(s, 0x10, 1100, 8 * KiB);
  const r2t = await s.next((p) => p.hdr.opcode === OP.R2T && p.hdr.itt === 0x10);
  sendData(s, 0x10, r2t.hdr.ttt!, 0, 0, Buffer.alloc(4 * KiB, 0x11), false);
  sendData(s, 0x10, r2t.hdr.ttt!, 1, 0, Buffer.alloc(4 * KiB, 0x22), true);
  assert.equal(await s.closedWithin(2000), true, 'the connection should be dropped');
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.ScsiResponse), false, 'the WRITE was answered');
  assert.ok((await medium(1100, 8 * KiB)).equals(before), 'a WRITE with its second half never sent reached the medium');
});

test('unsolicited Data-Out skipping bytes (InitialR2T=No: offset 4096 first): the connection is dropped and nothing is written', async () => {
  const s = await session({ ImmediateData: 'No', InitialR2T: 'No' });
  const before = await medium(1200, 8 * KiB);
  writeCommand(s, 0x20, 1200, 8 * KiB, { final: false });
  sendData(s, 0x20, 0xffffffff, 0, 4 * KiB, Buffer.alloc(4 * KiB, 0x33), true);
  assert.equal(await s.closedWithin(2000), true, 'the connection should be dropped');
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.ScsiResponse), false, 'the WRITE was answered');
  assert.ok((await medium(1200, 8 * KiB)).equals(before), 'a WRITE whose first half was never sent reached the medium');
});

test('unsolicited data ended short (F bit after 512 of min(FirstBurstLength, 8192) bytes): CHECK CONDITION INCORRECT AMOUNT OF DATA, no R2T, nothing written', async () => {
  const s = await session({ ImmediateData: 'No', InitialR2T: 'No' });
  const before = await medium(1300, 8 * KiB);
  writeCommand(s, 0x30, 1300, 8 * KiB, { final: false });
  sendData(s, 0x30, 0xffffffff, 0, 0, Buffer.alloc(512, 0x44), true);
  assertIncorrectAmount(await response(s, 0x30));
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.R2T), false, 'the rest was solicited');
  assert.ok((await medium(1300, 8 * KiB)).equals(before));
});

test('immediate data, unsolicited Data-Out up to FirstBurstLength in several PDUs, then R2Ts for the rest: GOOD and every byte in place', async () => {
  const s = await session({ ImmediateData: 'Yes', InitialR2T: 'No', FirstBurstLength: '16384', MaxBurstLength: '16384' });
  const data = pattern(48 * KiB, 99);
  writeCommand(s, 0x40, 1400, data.length, { final: false, data: data.subarray(0, 2 * KiB) });
  for (let off = 2 * KiB, sn = 0; off < 16 * KiB; off += 4 * KiB, sn++) {
    const n = Math.min(4 * KiB, 16 * KiB - off);
    sendData(s, 0x40, 0xffffffff, sn, off, data.subarray(off, off + n), off + n === 16 * KiB);
  }
  for (let off = 16 * KiB; off < data.length; off += 16 * KiB) {
    const r2t = await s.next((p) => p.hdr.opcode === OP.R2T && p.hdr.itt === 0x40);
    assert.equal(r2t.hdr.bufferOffset, off);
    for (let o = off, sn = 0; o < off + 16 * KiB; o += 8 * KiB, sn++) sendData(s, 0x40, r2t.hdr.ttt!, sn, o, data.subarray(o, o + 8 * KiB), o + 8 * KiB === off + 16 * KiB);
  }
  const rsp = await response(s, 0x40);
  assert.equal(rsp.hdr.status, 0);
  assert.ok((await medium(1400, data.length)).equals(data));
});

// ---- The CmdSN window: gaps, rejects and aborts ---------------------------------------------

test('a command rejected when a CmdSN gap fills does not strand the commands held behind it: Reject for it, the others executed in order', async () => {
  const s = await session({ ImmediateData: 'No' });
  const n = s.cmdSN;
  testUnitReady(s, 11, n + 1); // ahead of the gap: held
  writeCommand(s, 10, 0, 512, { cmdSN: n, data: Buffer.alloc(512) }); // immediate data with ImmediateData=No: rejected
  const rej = await s.next((p) => p.hdr.opcode === OP.Reject);
  assert.equal(rej.hdr.reason, 0x04);
  assert.equal(rej.data.readUInt32BE(16), 10, 'the Reject carries the rejected command\'s header');
  assert.equal((await response(s, 11)).hdr.status, 0, 'the command held behind the rejected one was never executed');
  testUnitReady(s, 12, n + 2);
  const later = await response(s, 12);
  assert.equal(later.hdr.status, 0);
  assert.equal(later.hdr.expCmdSN, n + 3);
  s.cmdSN = n + 3;
});

test('ABORT TASK of a command held behind a CmdSN gap: Function Complete, never executed, and ExpCmdSN passes its CmdSN once the gap fills', async () => {
  const s = await session();
  const n = s.cmdSN;
  const before = await medium(2000, 512);
  writeCommand(s, 21, 2000, 512, { cmdSN: n + 1, data: Buffer.alloc(512, 0x55) }); // held
  s.send(tmfRequest({ fn: TMF.AbortTask, itt: 99, refItt: 21, refCmdSN: n + 1, cmdSN: n + 2, expStatSN: s.expStatSN }));
  assert.equal((await s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === 99)).bhs[2], FUNCTION_COMPLETE);
  testUnitReady(s, 20, n); // fills the gap
  assert.equal((await response(s, 20)).hdr.status, 0);
  testUnitReady(s, 22, n + 2);
  const later = await response(s, 22);
  assert.equal(later.hdr.expCmdSN, n + 3);
  assert.equal(await answered(s, 21), false, 'the aborted command was answered');
  assert.ok((await medium(2000, 512)).equals(before), 'the aborted WRITE reached the medium');
  s.cmdSN = n + 3;
});

test('ABORT TASK of a command not received yet (RefCmdSN = ExpCmdSN): Function Complete, ExpCmdSN passes it, and the command arriving later is discarded', async () => {
  const s = await session();
  const n = s.cmdSN;
  const before = await medium(2100, 512);
  s.send(tmfRequest({ fn: TMF.AbortTask, itt: 98, refItt: 30, refCmdSN: n, cmdSN: n + 1, expStatSN: s.expStatSN }));
  assert.equal((await s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === 98)).bhs[2], FUNCTION_COMPLETE);
  writeCommand(s, 30, 2100, 512, { cmdSN: n, data: Buffer.alloc(512, 0x5a) }); // the aborted task arrives late
  testUnitReady(s, 31, n + 1);
  assert.equal((await response(s, 31)).hdr.status, 0, 'the next command was not executed');
  assert.equal(await answered(s, 30), false, 'a task reported aborted was answered');
  assert.ok((await medium(2100, 512)).equals(before), 'a task reported aborted (Function Complete) was executed');
  s.cmdSN = n + 2;
});

test('ABORT TASK of a command not received yet, itself behind a gap: the window passes its CmdSN when the gap fills, the command is discarded when it comes', async () => {
  const s = await session();
  const n = s.cmdSN;
  const before = await medium(2200, 512);
  s.send(tmfRequest({ fn: TMF.AbortTask, itt: 97, refItt: 41, refCmdSN: n + 1, cmdSN: n + 2, expStatSN: s.expStatSN }));
  assert.equal((await s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === 97)).bhs[2], FUNCTION_COMPLETE);
  testUnitReady(s, 42, n + 2); // held: n and n + 1 missing
  testUnitReady(s, 40, n);
  assert.equal((await response(s, 40)).hdr.status, 0);
  assert.equal((await response(s, 42)).hdr.expCmdSN, n + 3, 'ExpCmdSN did not pass the aborted CmdSN');
  writeCommand(s, 41, 2200, 512, { cmdSN: n + 1, data: Buffer.alloc(512, 0x66) });
  assert.equal(await answered(s, 41), false);
  assert.ok((await medium(2200, 512)).equals(before));
  s.cmdSN = n + 3;
});

test('ABORT TASK SET (immediate) over a CmdSN gap covers every command sent before it, held or not received yet, and is answered once they are all in; the command sent after it runs', async () => {
  // RFC 7143 §11.5.1: an immediate task set function covers the commands with a CmdSN below its
  // own, received or not; §11.6.2: the target waits for all of them before acting and answering.
  const s = await session();
  const n = s.cmdSN;
  const before = await medium(2300, 512);
  writeCommand(s, 51, 2300, 512, { cmdSN: n + 1, data: Buffer.alloc(512, 0x77) }); // held, sent before the TMF
  s.send(tmfRequest({ fn: TMF.AbortTaskSet, itt: 96, refItt: 0xffffffff, refCmdSN: 0, cmdSN: n + 2, expStatSN: s.expStatSN }));
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === 96, SILENCE_MS), false, 'answered with CmdSN n, sent before it, not received yet');
  testUnitReady(s, 52, n + 2); // held, sent after the TMF
  testUnitReady(s, 50, n); // sent before the TMF, arrives last: fills the gap, covered, dropped
  assert.equal((await s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === 96)).bhs[2], FUNCTION_COMPLETE);
  const after = await response(s, 52);
  assert.equal(after.hdr.status, 0);
  assert.equal(after.hdr.expCmdSN, n + 3);
  assert.equal(await answered(s, 50), false, 'a command sent before ABORT TASK SET and received after it was answered');
  assert.equal(await answered(s, 51), false, 'a command aborted by ABORT TASK SET was answered');
  assert.ok((await medium(2300, 512)).equals(before), 'a command aborted by ABORT TASK SET was executed');
  s.cmdSN = n + 3;
});

test('a WRITE held behind a CmdSN gap keeps the unsolicited Data-Out sent right after it: once the gap fills it executes with every byte, then the rest is solicited', async () => {
  const s = await session({ ImmediateData: 'Yes', InitialR2T: 'No', FirstBurstLength: '16384', MaxBurstLength: '16384' });
  const n = s.cmdSN;
  const data = pattern(32 * KiB, 321);
  writeCommand(s, 61, 2400, data.length, { cmdSN: n + 1, final: false, data: data.subarray(0, 4 * KiB) }); // held: n missing
  sendData(s, 61, 0xffffffff, 0, 4 * KiB, data.subarray(4 * KiB, 8 * KiB), false);
  sendData(s, 61, 0xffffffff, 1, 8 * KiB, data.subarray(8 * KiB, 16 * KiB), true);
  assert.equal(await got(s, (p) => p.hdr.itt === 61, SILENCE_MS), false, 'a command behind a CmdSN gap was answered or solicited before the gap filled');
  testUnitReady(s, 60, n); // fills the gap
  assert.equal((await response(s, 60)).hdr.status, 0);
  const r2t = await s.next((p) => p.hdr.opcode === OP.R2T && p.hdr.itt === 61);
  assert.equal(r2t.hdr.bufferOffset, 16 * KiB, 'the unsolicited data sent while the command was held was not kept');
  sendData(s, 61, r2t.hdr.ttt!, 0, 16 * KiB, data.subarray(16 * KiB), true);
  assert.equal((await response(s, 61)).hdr.status, 0);
  assert.ok((await medium(2400, data.length)).equals(data));
  s.cmdSN = n + 2;
});

test('unsolicited Data-Out of a WRITE held behind a gap and then aborted (ABORT TASK) is dropped with it: nothing written, the window passes it', async () => {
  const s = await session({ ImmediateData: 'No', InitialR2T: 'No' });
  const n = s.cmdSN;
  const before = await medium(2500, 8 * KiB);
  writeCommand(s, 71, 2500, 8 * KiB, { cmdSN: n + 1, final: false }); // held
  sendData(s, 71, 0xffffffff, 0, 0, Buffer.alloc(8 * KiB, 0x99), true);
  s.send(tmfRequest({ fn: TMF.AbortTask, itt: 95, refItt: 71, refCmdSN: n + 1, cmdSN: n + 2, expStatSN: s.expStatSN }));
  assert.equal((await s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === 95)).bhs[2], FUNCTION_COMPLETE);
  testUnitReady(s, 70, n);
  assert.equal((await response(s, 70)).hdr.status, 0);
  testUnitReady(s, 72, n + 2);
  assert.equal((await response(s, 72)).hdr.expCmdSN, n + 3);
  assert.equal(await answered(s, 71), false);
  assert.ok((await medium(2500, 8 * KiB)).equals(before), 'an aborted WRITE reached the medium with the data sent while it was held');
  // The ITT is free again: a new WRITE with it works.
  const data = pattern(8 * KiB, 72);
  s.cmdSN = n + 3;
  assert.equal((await s.write10(2500, data)).status, 0);
  assert.ok((await medium(2500, 8 * KiB)).equals(data));
});

test('the CmdSN window across 2^32: 64 commands in flight from CmdSN 0xfffffff0 all complete, ExpCmdSN wraps with them', async () => {
  const s = await RawInitiator.connect(t.port);
  t.track(s);
  s.cmdSN = 0xfffffff0;
  const lr = await s.login({ initiatorName: 'iqn.2026-11.dev.offsite.test:session-wrap', targetName: TARGET });
  assert.equal(lr.status, 0);
  const writes = [];
  for (let i = 0; i < 64; i++) writes.push(s.write10(3000 + i * 8, pattern(4 * KiB, i)));
  assert.ok((await Promise.all(writes)).every((w) => w.status === 0));
  for (let i = 0; i < 64; i++) assert.ok((await s.read10(3000 + i * 8, 8)).data.equals(pattern(4 * KiB, i)));
  assert.equal(s.cmdSN, (0xfffffff0 + 128) >>> 0);
  assert.equal(s.expCmdSN, s.cmdSN);
});
