/**
 * RFC 7143 §11.6.2 step d: before it answers ABORT TASK SET or CLEAR TASK SET, the target notes
 * the last StatSN sent on each connection sharing the task set and waits until the initiator has
 * acknowledged it (ExpStatSN past it), asking with a NOP-In (a TTT to answer) when it has not.
 * An initiator that never answers holds the function up for tmfTransferWaitMs only. Driven over
 * real sockets with hand-made PDUs (test/helpers/raw-initiator).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { cdb as CDB, nopOut, scsiCommand, tmfRequest } from '../helpers/iscsi-wire';
import { RawInitiator, type Received } from '../helpers/raw-initiator';
import { RawTarget } from '../helpers/raw-target';
import { until } from '../helpers/wait';

const TARGET = 'iqn.2026-11.dev.offsite:tmf-status-ack';
const OP = { ScsiResponse: 0x21, TmfResponse: 0x22 } as const;
const TMF = { AbortTaskSet: 2, ClearTaskSet: 4, LogicalUnitReset: 5 } as const;
const FUNCTION_COMPLETE = 0;
const WAIT_MS = 1500;

let t: RawTarget;

before(async () => {
  t = await RawTarget.start(TARGET, {}, { tmfTransferWaitMs: WAIT_MS });
});

after(() => t?.close());

const events = (): Record<string, number> => t.server.stats().events;
const delta = (before: Record<string, number>, name: string): number => (events()[name] ?? 0) - (before[name] ?? 0);
const tmfResponse = (s: RawInitiator, itt: number, ms = 3000): Promise<Received> => s.next((p) => p.hdr.opcode === OP.TmfResponse && p.hdr.itt === itt, ms);
const answered = (s: RawInitiator, itt: number, ms: number): Promise<boolean> => tmfResponse(s, itt, ms).then(() => true, () => false);

/** A TEST UNIT READY whose response this initiator has received (the target cannot know that until told). */
async function statusReceived(s: RawInitiator, itt: number): Promise<void> {
  s.send(scsiCommand({ itt, edtl: 0, lun: 0, cmdSN: s.cmdSN, expStatSN: s.expStatSN, cdb: CDB.testUnitReady() }, 0));
  s.cmdSN = (s.cmdSN + 1) >>> 0;
  // GOOD, or CHECK CONDITION with the unit attention a CLEAR TASK SET of another session left: a status either way.
  await s.next((p) => p.hdr.opcode === OP.ScsiResponse && p.hdr.itt === itt);
}

/** Log out and wait for the connection to close: a session left open shares the task set of a later CLEAR TASK SET. */
async function done(s: RawInitiator): Promise<void> {
  s.autoAnswerNop = true;
  await s.logout();
  assert.ok(await s.closedWithin(3000));
}

function taskSetFunction(s: RawInitiator, fn: number, itt: number, expStatSN = s.expStatSN): void {
  s.send(tmfRequest({ fn, lun: 0, itt, refItt: 0xffffffff, refCmdSN: 0, cmdSN: s.cmdSN, expStatSN }));
}

test('ABORT TASK SET acknowledging every status sent: answered with no NOP-In asked for', async () => {
  const s = await t.session('acked', 1);
  s.autoAnswerNop = false;
  await statusReceived(s, 0x10);
  const ev0 = events();
  taskSetFunction(s, TMF.AbortTaskSet, 0x90);
  assert.equal((await tmfResponse(s, 0x90)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(s.nopInPings.length, 0);
  assert.equal(delta(ev0, 'nop_solicited'), 0);
  await done(s);
});

test('ABORT TASK SET whose ExpStatSN leaves the last status unacknowledged: the target asks with a NOP-In and answers once the NOP-Out acknowledges it', async () => {
  const s = await t.session('stale', 1);
  s.autoAnswerNop = false;
  await statusReceived(s, 0x10);
  const ev0 = events();
  // As an initiator that sent the function before the TEST UNIT READY's status reached it.
  taskSetFunction(s, TMF.AbortTaskSet, 0x91, (s.expStatSN - 1) >>> 0);
  await until('the target to ask with a NOP-In', () => s.nopInPings.length === 1, 3000, 10);
  const ping = s.nopInPings[0];
  assert.equal(ping.hdr.itt, 0xffffffff);
  assert.equal(await answered(s, 0x91, 300), false, 'answered before the status sent before it was acknowledged');
  // A NOP-Out that still does not acknowledge it changes nothing.
  s.send(nopOut({ itt: 0xffffffff, ttt: ping.hdr.ttt, cmdSN: s.cmdSN, expStatSN: (s.expStatSN - 1) >>> 0 }, 0));
  assert.equal(await answered(s, 0x91, 300), false);
  s.send(nopOut({ itt: 0xffffffff, ttt: ping.hdr.ttt, cmdSN: s.cmdSN, expStatSN: s.expStatSN }, 0));
  assert.equal((await tmfResponse(s, 0x91)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(delta(ev0, 'nop_solicited'), 1);
  assert.equal(delta(ev0, 'tmf_status_ack_timeouts'), 0);
  await done(s);
});

test('CLEAR TASK SET: another session sharing the task set is asked too, and the function is answered once it acknowledged its statuses; one that never does holds it up for the wait limit only', async () => {
  const s1 = await t.session('clear', 2);
  const s2 = await t.session('third-party', 3);
  await statusReceived(s2, 0x20); // s2 sends nothing after its status: unacknowledged at the target
  let ev0 = events();
  taskSetFunction(s1, TMF.ClearTaskSet, 0x92);
  assert.equal((await tmfResponse(s1, 0x92)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(s2.nopInPings.length, 1, 'the other session was not asked to acknowledge its statuses');
  assert.equal(s1.nopInPings.length, 0, 'the session that sent the function had acknowledged everything');
  assert.equal(delta(ev0, 'nop_solicited'), 1);
  // s2 stops answering NOP-Ins: the function waits WAIT_MS, then is answered anyway.
  s2.autoAnswerNop = false;
  await statusReceived(s2, 0x21);
  ev0 = events();
  const started = Date.now();
  taskSetFunction(s1, TMF.ClearTaskSet, 0x93);
  assert.equal(await answered(s1, 0x93, WAIT_MS / 2), false, 'answered before the other session acknowledged its status');
  assert.equal((await tmfResponse(s1, 0x93, WAIT_MS * 4)).bhs[2], FUNCTION_COMPLETE);
  assert.ok(Date.now() - started >= WAIT_MS - 50);
  assert.equal(delta(ev0, 'tmf_status_ack_timeouts'), 1);
  await done(s1);
  await done(s2);
});

test('LOGICAL UNIT RESET does not wait for acknowledgements (step d is ABORT TASK SET\'s and CLEAR TASK SET\'s)', async () => {
  const s = await t.session('reset', 4);
  s.autoAnswerNop = false;
  await statusReceived(s, 0x30);
  const ev0 = events();
  taskSetFunction(s, TMF.LogicalUnitReset, 0x94, (s.expStatSN - 1) >>> 0);
  assert.equal((await tmfResponse(s, 0x94)).bhs[2], FUNCTION_COMPLETE);
  assert.equal(delta(ev0, 'nop_solicited'), 0);
});
