import test from 'node:test';
import assert from 'node:assert/strict';
import { A, B, cdb10, harness, makeNexus, senseOf } from '../helpers/scsi-harness';
import { TmfFunction, TmfResponse } from '../../src/scsi/port';

const TUR = [0, 0, 0, 0, 0, 0];

test('RESERVE(6)/RELEASE(6) across two initiators (libiscsi Reserve6.2Initiators)', async () => {
  const h = await harness();
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0])).status, 0);
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0])).status, 0); // re-reserve by the holder
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B })).status, 0x18);
  assert.equal((await h.run([0x17, 0, 0, 0, 0, 0], { nexus: B })).status, 0); // no effect
  assert.equal((await h.run([0x1a, 0, 0x3f, 0, 0xff, 0])).status, 0);
  assert.equal((await h.run([0x1a, 0, 0x3f, 0, 0xff, 0], { nexus: B })).status, 0x18);
  assert.equal((await h.run([0x12, 0, 0, 0, 36, 0], { nexus: B })).status, 0); // INQUIRY allowed
  assert.equal((await h.run([0x17, 0, 0, 0, 0, 0])).status, 0);
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B })).status, 0);
  assert.equal((await h.run([0x17, 0, 0, 0, 0, 0], { nexus: B })).status, 0);
});

test('RESERVE(6) is released by LU reset, target reset and nexus loss', async () => {
  const h = await harness();
  await h.run([0x16, 0, 0, 0, 0, 0]);
  assert.equal(h.target.taskManagement(TmfFunction.LogicalUnitReset, 0, A), TmfResponse.FunctionComplete);
  assert.equal(senseOf(await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B })), '6/29/03'); // UA first
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B })).status, 0);
  h.target.nexusEnded(B);
  assert.equal(senseOf(await h.run(TUR)), '6/29/03'); // the issuer's own reset UA
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0])).status, 0);
  h.target.taskManagement(TmfFunction.TargetWarmReset, 0, B);
  assert.equal(senseOf(await h.run(TUR)), '6/29/03');
  assert.equal(senseOf(await h.run(TUR, { nexus: B })), '6/29/03');
  assert.equal((await h.run([0x16, 0, 0, 0, 0, 0], { nexus: makeNexus('iqn.x:c', 3) })).status, 0);
});

test('unit attention: reported once, not for INQUIRY / REPORT LUNS, returned by REQUEST SENSE', async () => {
  const h = await harness();
  h.target.taskManagement(TmfFunction.LogicalUnitReset, 0, B);
  assert.equal((await h.run([0x12, 0, 0, 0, 36, 0])).status, 0);
  assert.equal((await h.run([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])).status, 0);
  const rs = await h.run([0x03, 0, 0, 0, 252, 0]);
  assert.equal(rs.status, 0);
  assert.deepEqual([rs.dataIn![0], rs.dataIn![2], rs.dataIn![12], rs.dataIn![13]], [0x70, 0x06, 0x29, 0x03]);
  assert.equal((await h.run(TUR)).status, 0);
  const none = await h.run([0x03, 1, 0, 0, 252, 0]); // DESC=1
  assert.deepEqual([...none.dataIn!], [0x72, 0, 0, 0, 0, 0, 0, 0]);
  // the issuing nexus gets one too (SAM-5 §6.3.3, libiscsi MultipathIO.Reset)
  assert.equal(senseOf(await h.run(TUR, { nexus: B })), '6/29/03');
  assert.equal((await h.run(TUR, { nexus: B })).status, 0);
});

test('CLEAR TASK SET raises COMMANDS CLEARED BY ANOTHER INITIATOR for the other nexuses', async () => {
  const h = await harness();
  h.target.taskManagement(TmfFunction.ClearTaskSet, 0, A);
  assert.equal((await h.run(TUR)).status, 0);
  assert.equal(senseOf(await h.run(TUR, { nexus: B })), '6/2f/00');
  assert.equal(h.target.taskManagement(TmfFunction.ClearTaskSet, 7, A), TmfResponse.LunDoesNotExist);
});

test('no unit attention on login, on reinstatement, or for a brand-new nexus', async () => {
  const h = await harness();
  const C = makeNexus('iqn.x:new', 4);
  h.target.nexusStarted(C, false);
  assert.equal((await h.run(TUR, { nexus: C })).status, 0);
  h.target.nexusEnded(C);
  h.target.nexusStarted(C, true);
  assert.equal((await h.run(TUR, { nexus: C })).status, 0);
});

test('a pending UA of a nexus is dropped when a new session of that nexus logs in', async () => {
  const h = await harness();
  h.target.taskManagement(TmfFunction.LogicalUnitReset, 0, A);
  h.target.nexusEnded(B);
  h.target.nexusStarted(B, false);
  assert.equal((await h.run(TUR, { nexus: B })).status, 0);
});

test('UA precedes INVALID OPCODE and RESERVATION CONFLICT', async () => {
  const h = await harness();
  await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B });
  h.target.taskManagement(TmfFunction.LogicalUnitReset, 0, B);
  await h.run(TUR, { nexus: B }); // its own reset UA
  await h.run([0x16, 0, 0, 0, 0, 0], { nexus: B });
  h.target.taskManagement(TmfFunction.ClearTaskSet, 0, B);
  assert.equal(senseOf(await h.run([0xc1, 0, 0, 0, 0, 0])), '6/29/03');
  assert.equal(senseOf(await h.run(cdb10(0x28, 0, 1))), '6/2f/00');
  assert.equal((await h.run(cdb10(0x28, 0, 1))).status, 0x18);
});
