/**
 * Task set functions sent as immediate ahead of a CmdSN gap (RFC 7143 §11.5.1, §11.6.2): ABORT
 * TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET and TARGET WARM RESET cover every command with a
 * CmdSN below their own, those not received yet included, and are answered only once all of
 * those are in (ExpCmdSN reaches the function's CmdSN). A command below it for a covered logical
 * unit that arrives in the meantime is taken in (the window passes its CmdSN) but never executed,
 * answered or sent an R2T. Driven over a real socket with hand-made PDUs (test/helpers/iscsi-wire).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { cdb as CDB, scsiCommand, tmfRequest } from '../helpers/iscsi-wire';
import { MemoryVolume } from '../helpers/memory-volume';
import { RawInitiator, type Received } from '../helpers/raw-initiator';
import { RawTarget } from '../helpers/raw-target';

const TARGET = 'iqn.2026-11.dev.offsite:deferred-task-set';
const KiB = 1024;
const OP = { ScsiResponse: 0x21, TmfResponse: 0x22, R2T: 0x31 } as const;
const TMF = { AbortTaskSet: 2, ClearTaskSet: 4, LogicalUnitReset: 5, TargetWarmReset: 6 } as const;
const FUNCTION_COMPLETE = 0;
/** How long a test waits for an answer that must not come. */
const SILENCE_MS = 400;

let lun1: MemoryVolume;
let t: RawTarget;

before(async () => {
  const lun0 = new MemoryVolume('vol0', 1024 * KiB, false);
  lun1 = new MemoryVolume('vol1', 1024 * KiB, false);
  t = await RawTarget.start(TARGET, { volume: lun0, extra: { luns: [{ lun: 0, volume: lun0 }, { lun: 1, volume: lun1 }] } });
});

after(() => t?.close());

/** A new session (its own ISID, so its own I_T nexus) with immediate data and solicited data only. */
const session = (): Promise<RawInitiator> => t.session('deferred', 1, { ImmediateData: 'Yes', InitialR2T: 'Yes' });

const events = (): Record<string, number> => t.server.stats().events;
const response = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.ScsiResponse && p.hdr.itt === itt, ms);
const tmfResponse = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === itt, ms);

/** Whether a PDU matching `pred` was received, or arrives within `ms`. */
async function got(s: RawInitiator, pred: (p: Received) => boolean, ms = SILENCE_MS): Promise<boolean> {
  return s.next(pred, ms).then(() => true, () => false);
}

/** Whether the target said anything at all (a response, an R2T) about `itt`. */
const heardOf = (s: RawInitiator, itt: number, ms = SILENCE_MS): Promise<boolean> => got(s, (p) => p.hdr.itt === itt, ms);

/** A WRITE(10) of one block at `lba`: with its data as immediate data, or (`data` false) asking for an R2T. */
function write(s: RawInitiator, itt: number, cmdSN: number, lba: number, o: { lun?: number; fill?: number; data?: boolean } = {}): void {
  const data = o.data === false ? undefined : Buffer.alloc(512, o.fill ?? 0x77);
  s.send(scsiCommand({ itt, edtl: 512, write: true, lun: o.lun ?? 0, cmdSN, expStatSN: s.expStatSN, cdb: CDB.write10(lba, 1) }, data?.length ?? 0), data);
}

function testUnitReady(s: RawInitiator, itt: number, cmdSN: number, lun = 0): void {
  s.send(scsiCommand({ itt, edtl: 0, lun, cmdSN, expStatSN: s.expStatSN, cdb: CDB.testUnitReady() }, 0));
}

function taskSetFunction(s: RawInitiator, fn: number, itt: number, cmdSN: number, lun = 0): void {
  s.send(tmfRequest({ fn, lun, itt, refItt: 0xffffffff, refCmdSN: 0, cmdSN, expStatSN: s.expStatSN }));
}

test('immediate ABORT TASK SET over a CmdSN gap: no response until the gap fills; the WRITEs below its CmdSN arriving late are neither executed, answered nor sent an R2T; the command after it runs', async () => {
  const s = await session();
  const n = s.cmdSN;
  const before0 = await t.h.volume.read(100 * 512, 2 * 512);
  const ev0 = events();
  taskSetFunction(s, TMF.AbortTaskSet, 0x90, n + 2); // n and n + 1 not received yet
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false, 'ABORT TASK SET answered before the commands sent before it were received');
  testUnitReady(s, 0x12, n + 2); // sent after the TMF: held behind the gap
  write(s, 0x11, n + 1, 101, { data: false }); // sent before the TMF, arrives late, held behind n
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse, 100), false, 'answered with a command before it still missing');
  write(s, 0x10, n, 100, { fill: 0x5a }); // sent before the TMF, arrives last: fills the gap
  assert.equal((await tmfResponse(s, 0x90)).bhs[2], FUNCTION_COMPLETE);
  const later = await response(s, 0x12);
  assert.equal(later.hdr.status, 0, 'the command sent after ABORT TASK SET did not run');
  assert.equal(later.hdr.expCmdSN, n + 3, 'the window did not pass the dropped commands\' CmdSNs');
  assert.equal(await heardOf(s, 0x10), false, 'a WRITE covered by ABORT TASK SET was answered');
  assert.equal(await heardOf(s, 0x11, 50), false, 'a WRITE covered by ABORT TASK SET was answered or sent an R2T');
  assert.ok((await t.h.volume.read(100 * 512, 2 * 512)).equals(before0), 'a WRITE covered by ABORT TASK SET reached the volume');
  const ev = events();
  assert.equal((ev.tmf_deferred ?? 0) - (ev0.tmf_deferred ?? 0), 1);
  assert.equal((ev.cmdsn_aborted_by_task_set ?? 0) - (ev0.cmdsn_aborted_by_task_set ?? 0), 2);
  // The session goes on.
  s.cmdSN = n + 3;
  assert.equal((await s.write10(102, Buffer.alloc(512, 0x33))).status, 0);
});

for (const [name, fn] of [['ABORT TASK SET', TMF.AbortTaskSet], ['CLEAR TASK SET', TMF.ClearTaskSet], ['LOGICAL UNIT RESET', TMF.LogicalUnitReset]] as const) {
  test(`immediate ${name} for LUN 0 over a CmdSN gap: the late commands below its CmdSN for LUN 0 are dropped, those for LUN 1 run; answered once they are all in`, async () => {
    const s = await session();
    const n = s.cmdSN;
    const lba = 200 + fn * 4;
    const before0 = await t.h.volume.read(lba * 512, 512);
    taskSetFunction(s, fn, 0x91, n + 2, 0);
    write(s, 0x21, n + 1, lba, { lun: 1, fill: 0x61 }); // LUN 1: not covered; held behind n
    assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false, `${name} answered before the commands sent before it were received`);
    write(s, 0x20, n, lba, { lun: 0, fill: 0x60 }); // LUN 0: covered
    assert.equal((await tmfResponse(s, 0x91)).bhs[2], FUNCTION_COMPLETE);
    assert.equal((await response(s, 0x21)).hdr.status, 0, 'a command for another logical unit was not executed');
    assert.ok((await lun1.read(lba * 512, 512)).equals(Buffer.alloc(512, 0x61)));
    assert.equal(await heardOf(s, 0x20), false, `a command covered by ${name} was answered`);
    assert.ok((await t.h.volume.read(lba * 512, 512)).equals(before0), `a WRITE covered by ${name} reached the volume`);
    testUnitReady(s, 0x22, n + 2); // after the TMF: answered (a reset may report it with a unit attention)
    assert.equal((await response(s, 0x22)).hdr.expCmdSN, n + 3);
    s.cmdSN = n + 3;
  });
}

test('immediate TARGET WARM RESET over a CmdSN gap: the late commands below its CmdSN are dropped on every logical unit; answered once they are all in; the command after it is answered', async () => {
  const s = await session();
  const n = s.cmdSN;
  const b0 = await t.h.volume.read(300 * 512, 512);
  const b1 = await lun1.read(300 * 512, 512);
  taskSetFunction(s, TMF.TargetWarmReset, 0x92, n + 2, 0);
  testUnitReady(s, 0x32, n + 2); // after the TMF: held
  write(s, 0x31, n + 1, 300, { lun: 1, fill: 0x71 });
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false, 'TARGET WARM RESET answered before the commands sent before it were received');
  write(s, 0x30, n, 300, { lun: 0, fill: 0x70 });
  assert.equal((await tmfResponse(s, 0x92)).bhs[2], FUNCTION_COMPLETE);
  assert.equal((await response(s, 0x32)).hdr.expCmdSN, n + 3, 'the command sent after the reset was not answered');
  assert.equal(await heardOf(s, 0x30), false);
  assert.equal(await heardOf(s, 0x31, 50), false);
  assert.ok((await t.h.volume.read(300 * 512, 512)).equals(b0), 'a WRITE covered by TARGET WARM RESET reached LUN 0');
  assert.ok((await lun1.read(300 * 512, 512)).equals(b1), 'a WRITE covered by TARGET WARM RESET reached LUN 1');
  s.cmdSN = n + 3;
});

test('immediate ABORT TASK SET with no CmdSN gap: answered at once, not deferred, and the command with its CmdSN runs', async () => {
  // A guard for the common case (no behaviour change): it passes before and after the deferral.
  const s = await session();
  const n = s.cmdSN;
  const ev0 = events();
  taskSetFunction(s, TMF.AbortTaskSet, 0x93, n);
  assert.equal((await tmfResponse(s, 0x93, SILENCE_MS)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(events().tmf_deferred ?? 0, ev0.tmf_deferred ?? 0);
  write(s, 0x40, n, 400, { fill: 0x44 });
  assert.equal((await response(s, 0x40)).hdr.status, 0);
  assert.ok((await t.h.volume.read(400 * 512, 512)).equals(Buffer.alloc(512, 0x44)));
  s.cmdSN = n + 1;
});

test('immediate LOGICAL UNIT RESET over a CmdSN gap acts before the commands sent after it: the TEST UNIT READY after it sees the reset (UNIT ATTENTION), answered after the function', async () => {
  const s = await session();
  const n = s.cmdSN;
  taskSetFunction(s, TMF.LogicalUnitReset, 0x93, n + 1, 0); // n not received yet
  testUnitReady(s, 0x41, n + 1, 0); // sent after the reset: held behind the gap
  testUnitReady(s, 0x42, n + 2, 0);
  assert.equal(await got(s, (p) => p.hdr.opcode === OP.TmfResponse), false);
  write(s, 0x40, n, 400, { lun: 1, fill: 0x44 }); // LUN 1: not covered; fills the gap
  const order: number[] = [];
  const seen = (p: Received) => {
    if (p.hdr.itt === 0x93 || p.hdr.itt === 0x41 || p.hdr.itt === 0x42) order.push(p.hdr.itt);
    return order.length === 3;
  };
  await s.next(seen, 3000);
  assert.deepEqual(order, [0x93, 0x41, 0x42], 'a command sent after the reset was answered before it');
  const tur = await response(s, 0x41);
  assert.equal(tur.hdr.status, 2, 'the TEST UNIT READY sent after the reset ran before it (no unit attention)');
  const key = tur.data.length > 4 ? tur.data[2 + 2] & 0x0f : -1;
  assert.equal(key, 6, 'UNIT ATTENTION');
  s.cmdSN = n + 3;
});
