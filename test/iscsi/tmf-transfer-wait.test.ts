/**
 * ABORT TASK SET and CLEAR TASK SET over WRITEs with an R2T outstanding (RFC 7143 §11.6.2): the
 * initiator goes on answering the R2Ts of the aborted tasks, and the target answers the function
 * only once they are all answered (b), its wait bounded (an initiator that never answers does
 * not hold it up for good). The aborted WRITEs are never answered nor written, get no R2T more,
 * and their ITTs can be used again once the function is answered. The resets do not wait; a late
 * answer to an R2T of a task they aborted is dropped even when its ITT is in use again. Driven
 * over a real socket with hand-made PDUs (test/helpers/iscsi-wire).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { cdb as CDB, dataOut, scsiCommand, tmfRequest } from '../helpers/iscsi-wire';
import { pattern, RawInitiator, type Received } from '../helpers/raw-initiator';
import { RawTarget } from '../helpers/raw-target';

const TARGET = 'iqn.2026-11.dev.offsite:tmf-transfer-wait';
const KiB = 1024;
const OP = { ScsiResponse: 0x21, TmfResponse: 0x22, R2T: 0x31 } as const;
const TMF = { AbortTaskSet: 2, ClearTaskSet: 4, LogicalUnitReset: 5 } as const;
const FUNCTION_COMPLETE = 0;
/** How long a test waits for an answer that must not come. */
const SILENCE_MS = 400;
/** The server's bound on the wait for the R2Ts of aborted tasks. */
const WAIT_MS = 1500;

let t: RawTarget;

before(async () => {
  t = await RawTarget.start(TARGET, { sizeBytes: 4 * 1024 * KiB }, { tmfTransferWaitMs: WAIT_MS });
});

after(() => t?.close());

/** A new session with solicited data only (ImmediateData=No, InitialR2T=Yes). */
const session = (keys: Record<string, string> = {}): Promise<RawInitiator> => t.session('tmf-wait', 2, { ImmediateData: 'No', InitialR2T: 'Yes', ...keys });

const events = (): Record<string, number> => t.server.stats().events;
const delta = (ev0: Record<string, number>, name: string): number => (events()[name] ?? 0) - (ev0[name] ?? 0);
const medium = (lba: number, bytes: number): Promise<Buffer> => t.h.volume.read(lba * 512, bytes);
const response = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.ScsiResponse && p.hdr.itt === itt, ms);
const tmfResponse = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === itt, ms);
const r2t = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.R2T && p.hdr.itt === itt, ms);

/** Whether a PDU matching `pred` was received, or arrives within `ms`. */
async function got(s: RawInitiator, pred: (p: Received) => boolean, ms = SILENCE_MS): Promise<boolean> {
  return s.next(pred, ms).then(() => true, () => false);
}

/** A WRITE(10) of `bytes` bytes at `lba`, its data left to R2Ts. Takes the next CmdSN. */
function write(s: RawInitiator, itt: number, lba: number, bytes: number): void {
  s.send(scsiCommand({ itt, edtl: bytes, write: true, cmdSN: s.cmdSN++, expStatSN: s.expStatSN, cdb: CDB.write10(lba, bytes / 512) }, 0));
}

function sendData(s: RawInitiator, itt: number, ttt: number, dataSN: number, offset: number, data: Buffer, final: boolean): void {
  s.send(dataOut({ final, itt, ttt, expStatSN: s.expStatSN, dataSN, bufferOffset: offset }, data.length), data);
}

/** Answer an R2T whole, in one PDU per `pdu` bytes, from `data` (the WRITE's whole data). */
function answer(s: RawInitiator, itt: number, r: Received, data: Buffer, pdu = 64 * KiB): void {
  const start = r.hdr.bufferOffset!;
  const end = start + r.hdr.desiredLength!;
  let dataSN = 0;
  for (let off = start; off < end; off += pdu) {
    const n = Math.min(pdu, end - off);
    sendData(s, itt, r.hdr.ttt!, dataSN++, off, data.subarray(off, off + n), off + n === end);
  }
}

/** A task set function (immediate, with the next CmdSN, which it does not take). */
function taskSetFunction(s: RawInitiator, fn: number, itt: number): void {
  s.send(tmfRequest({ fn, itt, refItt: 0xffffffff, refCmdSN: 0, cmdSN: s.cmdSN, expStatSN: s.expStatSN }));
}

/** A WRITE whose R2Ts are answered as they come: resolves with its SCSI Response. */
async function fullWrite(s: RawInitiator, itt: number, lba: number, data: Buffer): Promise<Received> {
  write(s, itt, lba, data.length);
  for (let done = 0; done < data.length;) {
    const r = await r2t(s, itt);
    answer(s, itt, r, data);
    done = r.hdr.bufferOffset! + r.hdr.desiredLength!;
  }
  return response(s, itt);
}

test('ABORT TASK SET over a WRITE with an R2T outstanding: answered only once the initiator has answered the R2T (F bit); the WRITE is neither answered nor written; its ITT then serves a new WRITE, the connection up', async () => {
  const s = await session();
  const lba = 500;
  const data = pattern(4 * KiB, 31);
  const before0 = await medium(lba, data.length);
  const ev0 = events();
  write(s, 0x10, lba, data.length);
  const r = await r2t(s, 0x10);
  assert.equal(r.hdr.desiredLength, data.length);
  sendData(s, 0x10, r.hdr.ttt!, 0, 0, data.subarray(0, KiB), false); // part of the R2T answered before the TMF
  taskSetFunction(s, TMF.AbortTaskSet, 0x90);
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false, 'ABORT TASK SET answered while an R2T of a task it aborts was still being answered');
  sendData(s, 0x10, r.hdr.ttt!, 1, KiB, data.subarray(KiB, 2 * KiB), false);
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse, 100), false, 'answered before the R2T\'s last PDU');
  sendData(s, 0x10, r.hdr.ttt!, 2, 2 * KiB, data.subarray(2 * KiB), true);
  assert.equal((await tmfResponse(s, 0x90)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(await got(s, (p) => p.hdr.itt === 0x10, 100), false, 'the aborted WRITE was answered');
  assert.ok((await medium(lba, data.length)).equals(before0), 'the aborted WRITE reached the medium');
  assert.equal(delta(ev0, 'tmf_waited_for_ttt'), 1);
  assert.equal(delta(ev0, 'dataout_drained'), 2);
  assert.equal(delta(ev0, 'tmf_ttt_wait_timeouts'), 0);
  // The ITT is free again: a new WRITE with it runs, and the connection is still up.
  const fresh = pattern(4 * KiB, 32);
  assert.equal((await fullWrite(s, 0x10, lba, fresh)).hdr.status, 0);
  assert.ok((await medium(lba, fresh.length)).equals(fresh));
  assert.equal(s.isClosed, false);
});

test('CLEAR TASK SET over a WRITE with an R2T outstanding (MaxBurstLength 512: more R2Ts to come): answered once the outstanding R2T is answered, no R2T more for the aborted WRITE; its ITT then serves a new WRITE', async () => {
  const s = await session({ MaxBurstLength: '512', FirstBurstLength: '512' });
  const lba = 600;
  const data = pattern(2 * KiB, 41);
  const before0 = await medium(lba, data.length);
  const ev0 = events();
  write(s, 0x20, lba, data.length);
  const r = await r2t(s, 0x20);
  assert.equal(r.hdr.desiredLength, 512);
  taskSetFunction(s, TMF.ClearTaskSet, 0x91);
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false, 'CLEAR TASK SET answered while an R2T of a task it aborts was outstanding');
  answer(s, 0x20, r, data);
  assert.equal((await tmfResponse(s, 0x91)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(await got(s, (p) => p.hdr.itt === 0x20, 100), false, 'the aborted WRITE was sent another R2T or answered');
  assert.ok((await medium(lba, data.length)).equals(before0), 'the aborted WRITE reached the medium');
  assert.equal(delta(ev0, 'tmf_waited_for_ttt'), 1);
  const fresh = pattern(2 * KiB, 42);
  assert.equal((await fullWrite(s, 0x20, lba, fresh)).hdr.status, 0);
  assert.ok((await medium(lba, fresh.length)).equals(fresh));
  assert.equal(s.isClosed, false);
});

test('ABORT TASK SET whose aborted WRITE\'s R2T is never answered: answered after the bounded wait; the ITT serves a new WRITE, and the old R2T\'s answer coming late is dropped without dropping the connection', async () => {
  const s = await session();
  const lba = 700;
  const stale = pattern(4 * KiB, 51);
  const ev0 = events();
  write(s, 0x30, lba, stale.length);
  const old = await r2t(s, 0x30);
  const t0 = Date.now();
  taskSetFunction(s, TMF.AbortTaskSet, 0x92);
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false, 'ABORT TASK SET answered while an R2T of a task it aborts was outstanding');
  assert.equal((await tmfResponse(s, 0x92, WAIT_MS + 3000)).bhs[2], FUNCTION_COMPLETE);
  assert.ok(Date.now() - t0 >= WAIT_MS - 100, `answered after ${Date.now() - t0} ms, before the wait's bound`);
  assert.equal(delta(ev0, 'tmf_ttt_wait_timeouts'), 1);
  // The ITT again, for a new WRITE; the old R2T's answer arrives while it waits for its own.
  const fresh = pattern(4 * KiB, 52);
  write(s, 0x30, lba, fresh.length);
  const r = await r2t(s, 0x30);
  assert.notEqual(r.hdr.ttt, old.hdr.ttt);
  answer(s, 0x30, old, stale, KiB);
  answer(s, 0x30, r, fresh);
  assert.equal((await response(s, 0x30)).hdr.status, 0);
  assert.ok((await medium(lba, fresh.length)).equals(fresh), 'the new WRITE\'s data is not what reached the medium');
  assert.equal(await s.closedWithin(100), false, 'the late answer to the aborted WRITE\'s R2T dropped the connection');
  assert.equal(delta(ev0, 'dataout_retired_r2t'), 4);
});

test('LOGICAL UNIT RESET does not wait for the R2Ts of the WRITEs it aborts; their answer coming after the ITT serves a new WRITE is dropped, the connection stays up', async () => {
  const s = await session();
  const lba = 800;
  const stale = pattern(4 * KiB, 61);
  const ev0 = events();
  write(s, 0x40, lba, stale.length);
  const old = await r2t(s, 0x40);
  taskSetFunction(s, TMF.LogicalUnitReset, 0x93);
  assert.equal((await tmfResponse(s, 0x93, WAIT_MS - 500)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(delta(ev0, 'tmf_waited_for_ttt'), 0);
  // The reset's unit attention goes to a TEST UNIT READY, not to the WRITE below.
  await s.scsi(CDB.testUnitReady());
  const fresh = pattern(4 * KiB, 62);
  write(s, 0x40, lba, fresh.length);
  const r = await r2t(s, 0x40);
  answer(s, 0x40, old, stale);
  answer(s, 0x40, r, fresh);
  assert.equal((await response(s, 0x40)).hdr.status, 0);
  assert.ok((await medium(lba, fresh.length)).equals(fresh));
  assert.equal(await s.closedWithin(100), false, 'the late answer to the aborted WRITE\'s R2T dropped the connection');
  assert.equal(delta(ev0, 'dataout_retired_r2t'), 1);
});

test('a Data-Out breaking the sequence of an aborted WRITE\'s R2T while ABORT TASK SET waits for it (a hole) still drops the connection', async () => {
  const s = await session();
  const data = pattern(4 * KiB, 71);
  write(s, 0x50, 900, data.length);
  const r = await r2t(s, 0x50);
  taskSetFunction(s, TMF.AbortTaskSet, 0x94);
  sendData(s, 0x50, r.hdr.ttt!, 0, KiB, data.subarray(KiB, 2 * KiB), false); // offset 1024, 0 expected
  assert.equal(await s.closedWithin(2000), true, 'a Data-Out out of order for an aborted task was accepted');
});
