/**
 * The login state machine driven directly (RFC 7143 §6.3, §11.12–11.13, §12.1.3): security →
 * operational → full feature phase; AuthMethod None and CHAP (one-way and mutual, responses
 * computed here with node:crypto, not with src/iscsi/chap); and every refusal with its status:
 * authentication failure 0x0201, authorization failure 0x0202, target not found 0x0203,
 * unsupported version 0x0205, missing parameter 0x0207, unsupported session type 0x0209,
 * initiator error 0x0200 and out of resources 0x0302.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import test from 'node:test';
import fc from 'fast-check';
import { LoginStatus, Stage, TARGET_LIMITS } from '../../src/iscsi/constants';
import { LoginMachine, type LoginReply, type LoginRequestFields } from '../../src/iscsi/login';
import { defaultOffer } from '../../src/iscsi/negotiation';
import type { TargetAuth, TargetDirectory, TargetEntry } from '../../src/iscsi/targets';
import type { ScsiTarget } from '../../src/scsi/port';
import { textData } from '../helpers/iscsi-wire';

const PREFIX = 'iqn.2026-11.dev.offsite';
const INITIATOR = 'iqn.1994-05.com.example:host1';
const CHAP = { user: 'alice', secret: 'alice-secret-0123' };
const MUTUAL = { user: 'the-target', secret: 'target-secret-4567' };

function entry(name: string, auth: TargetAuth): TargetEntry {
  // The login machine never touches the SCSI side.
  return { name: `${PREFIX}:${name}`, alias: name, auth, scsi: {} as ScsiTarget };
}

const TARGETS = [
  entry('open', {}),
  entry('secure', { chap: CHAP }),
  entry('mutual', { chap: CHAP, mutualChap: MUTUAL }),
  entry('restricted', { allowedInitiators: ['iqn.1994-05.com.example:allowed'] }),
];
const directory: TargetDirectory = { targets: () => TARGETS, lookup: (n) => TARGETS.find((t) => t.name === n) };

const machine = () => new LoginMachine({ directory, offer: defaultOffer(), portalGroupTag: 7 });
const ISID = Buffer.from('80aabbcc0001', 'hex');

function req(f: Partial<LoginRequestFields> = {}): LoginRequestFields {
  return { transit: true, cont: false, csg: Stage.Security, nsg: Stage.Operational, versionMax: 0, versionMin: 0, isid: ISID, tsih: 0, itt: 1, cid: 0, cmdSN: 1, expStatSN: 0, ...f };
}

interface Step extends LoginReply {
  keys: Map<string, string>;
}
function step(m: LoginMachine, f: Partial<LoginRequestFields>, keys: Record<string, string> | Array<[string, string]>): Step {
  const r = m.step(req(f), textData(keys));
  return { ...r, keys: new Map(r.pairs) };
}
const hexStatus = (s: number) => `0x${s.toString(16).padStart(4, '0')}`;
function assertStatus(r: LoginReply, status: LoginStatus, why?: string): void {
  assert.equal(hexStatus(r.status), hexStatus(status), `${why ?? ''} (reason: ${r.reason ?? '-'})`);
  if (status !== LoginStatus.Success) {
    assert.equal(r.transit, false);
    assert.equal(r.complete, false);
    assert.deepEqual(r.pairs, [], 'a failed login response carries no keys');
    assert.ok(r.reason, 'a failure has a reason for the log');
  }
}

/** RFC 1994: MD5(identifier || secret || challenge), hex-encoded as iSCSI binary values are. */
function chapResponse(id: number, secret: string, challenge: Buffer): string {
  return `0x${createHash('md5').update(Buffer.from([id])).update(secret).update(challenge).digest('hex')}`;
}
function decodeHex(v: string | undefined): Buffer {
  assert.ok(v && /^0x[0-9a-f]+$/i.test(v), `binary value ${v}`);
  return Buffer.from(v.slice(2), 'hex');
}

const identity = (target: string, extra: Record<string, string> = {}) => ({ InitiatorName: INITIATOR, TargetName: `${PREFIX}:${target}`, SessionType: 'Normal', ...extra });

/** Security stage up to the CHAP challenge; returns the machine and the challenge. */
function challenged(target: string): { m: LoginMachine; id: number; challenge: Buffer } {
  const m = machine();
  const r1 = step(m, {}, identity(target, { AuthMethod: 'CHAP,None' }));
  assertStatus(r1, LoginStatus.Success);
  assert.equal(r1.keys.get('AuthMethod'), 'CHAP');
  assert.equal(r1.transit, false, 'no transition before CHAP is done');
  const r2 = step(m, { transit: false }, { CHAP_A: '7,5' });
  assertStatus(r2, LoginStatus.Success);
  assert.equal(r2.keys.get('CHAP_A'), '5', 'MD5 picked from the list');
  const id = Number(r2.keys.get('CHAP_I'));
  assert.ok(Number.isInteger(id) && id >= 0 && id <= 255, `CHAP_I ${id}`);
  const challenge = decodeHex(r2.keys.get('CHAP_C'));
  assert.ok(challenge.length >= 16, 'at least 128 bits of challenge');
  return { m, id, challenge };
}

const OPERATIONAL = {
  HeaderDigest: 'CRC32C,None', DataDigest: 'None', MaxRecvDataSegmentLength: '65536', MaxBurstLength: '1048576', FirstBurstLength: '2097152',
  ImmediateData: 'Yes', InitialR2T: 'No', MaxOutstandingR2T: '4', DataPDUInOrder: 'Yes', DataSequenceInOrder: 'Yes',
  DefaultTime2Wait: '2', DefaultTime2Retain: '0', ErrorRecoveryLevel: '0', MaxConnections: '1',
};

/** Operational stage to full feature phase; asserts the transition. */
function finish(m: LoginMachine, keys: Record<string, string> = OPERATIONAL): Step {
  const r = step(m, { csg: Stage.Operational, nsg: Stage.FullFeature }, keys);
  assertStatus(r, LoginStatus.Success);
  assert.equal(r.transit, true);
  assert.equal(r.complete, true);
  assert.equal(r.csg, Stage.Operational);
  assert.equal(r.nsg, Stage.FullFeature);
  assert.equal(m.stage, Stage.FullFeature);
  return r;
}

// ---- Successful logins ----------------------------------------------------------------------

test('AuthMethod=None: security → operational → full feature, every operational key answered, the session parameters set', () => {
  const m = machine();
  const r1 = step(m, {}, identity('open', { AuthMethod: 'None', InitiatorAlias: 'host1' }));
  assertStatus(r1, LoginStatus.Success);
  assert.equal(r1.transit, true);
  assert.equal(r1.csg, Stage.Security);
  assert.equal(r1.nsg, Stage.Operational);
  assert.equal(r1.complete, false);
  assert.equal(r1.keys.get('AuthMethod'), 'None');
  assert.equal(r1.keys.get('TargetPortalGroupTag'), '7', 'TPGT in the first response of a normal session');
  assert.equal(r1.keys.get('TargetAlias'), 'open');
  assert.equal(m.stage, Stage.Operational);
  assert.equal(m.initiatorName, INITIATOR);
  assert.equal(m.initiatorAlias, 'host1');
  assert.equal(m.target?.name, `${PREFIX}:open`);

  const r2 = finish(m);
  assert.equal(r2.keys.has('TargetPortalGroupTag'), false, 'TPGT is sent once');
  for (const k of Object.keys(OPERATIONAL)) assert.ok(r2.keys.has(k), `${k} answered`);
  assert.equal(r2.keys.get('HeaderDigest'), 'CRC32C');
  assert.equal(r2.keys.get('MaxRecvDataSegmentLength'), String(TARGET_LIMITS.maxRecvDataSegmentLength));
  // FirstBurstLength offered above MaxBurstLength: what is answered never exceeds it.
  assert.ok(Number(r2.keys.get('FirstBurstLength')) <= Number(r2.keys.get('MaxBurstLength')));
  assert.equal(m.params.headerDigest, true);
  assert.equal(m.params.dataDigest, false);
  assert.equal(m.params.initiatorMaxRecvDataSegmentLength, 65536);
  assert.equal(m.params.targetMaxRecvDataSegmentLength, TARGET_LIMITS.maxRecvDataSegmentLength);
  assert.equal(m.params.maxBurstLength, 1048576);
  assert.equal(m.params.firstBurstLength, Number(r2.keys.get('FirstBurstLength')));
  assert.equal(m.params.immediateData, true);
  assert.equal(m.params.initialR2T, false);
  assert.equal(m.params.maxOutstandingR2T, Number(r2.keys.get('MaxOutstandingR2T')));
  assert.equal(m.authenticated, false);
});

test('the target declares MaxRecvDataSegmentLength when the initiator never raised it; operational keys may span several PDUs', () => {
  const m = machine();
  assertStatus(step(m, {}, identity('open', { AuthMethod: 'None' })), LoginStatus.Success);
  const a = step(m, { csg: Stage.Operational, nsg: 0, transit: false }, { ImmediateData: 'No' });
  assertStatus(a, LoginStatus.Success);
  assert.equal(a.transit, false);
  assert.equal(a.keys.get('ImmediateData'), 'No');
  const b = finish(m, { MaxBurstLength: '65536' });
  assert.equal(b.keys.get('MaxRecvDataSegmentLength'), String(TARGET_LIMITS.maxRecvDataSegmentLength), 'declared by the target');
  assert.equal(m.params.immediateData, false, 'kept from the earlier PDU');
  assert.equal(m.params.maxBurstLength, 65536);
});

test('a login may start in the operational stage, or go straight from security to full feature, when no CHAP is required', () => {
  const m1 = machine();
  const r = step(m1, { csg: Stage.Operational, nsg: Stage.FullFeature }, identity('open', { MaxBurstLength: '8192' }));
  assertStatus(r, LoginStatus.Success);
  assert.equal(r.complete, true);
  assert.equal(m1.params.maxBurstLength, 8192);

  const m2 = machine();
  const r2 = step(m2, { nsg: Stage.FullFeature }, identity('open', { AuthMethod: 'None' }));
  assertStatus(r2, LoginStatus.Success);
  assert.equal(r2.complete, true);
  assert.equal(r2.keys.has('MaxRecvDataSegmentLength'), true);
});

test('discovery sessions need no TargetName and get no TPGT; a TargetName in one is an initiator error', () => {
  const m = machine();
  const r = step(m, { nsg: Stage.FullFeature }, { InitiatorName: INITIATOR, SessionType: 'Discovery', AuthMethod: 'None' });
  assertStatus(r, LoginStatus.Success);
  assert.equal(r.complete, true);
  assert.equal(r.keys.has('TargetPortalGroupTag'), false);
  assert.equal(m.sessionType, 'Discovery');
  const bad = step(machine(), {}, { InitiatorName: INITIATOR, SessionType: 'Discovery', TargetName: `${PREFIX}:open`, AuthMethod: 'None' });
  assertStatus(bad, LoginStatus.InitiatorError);
});

test('one-way CHAP: AuthMethod=CHAP, CHAP_A, then CHAP_N/CHAP_R proves the secret and the login goes on', () => {
  const { m, id, challenge } = challenged('secure');
  const r3 = step(m, {}, { CHAP_N: CHAP.user, CHAP_R: chapResponse(id, CHAP.secret, challenge) });
  assertStatus(r3, LoginStatus.Success);
  assert.equal(r3.transit, true);
  assert.equal(r3.nsg, Stage.Operational);
  assert.equal(r3.keys.has('CHAP_N'), false, 'no mutual answer when none was asked');
  assert.equal(m.authenticated, true);
  finish(m);
});

test('one-way CHAP also accepts the response in base64 (0b) form', () => {
  const { m, id, challenge } = challenged('secure');
  const b64 = `0b${Buffer.from(chapResponse(id, CHAP.secret, challenge).slice(2), 'hex').toString('base64')}`;
  assertStatus(step(m, {}, { CHAP_N: CHAP.user, CHAP_R: b64 }), LoginStatus.Success);
});

test('mutual CHAP: the target answers the initiator\'s challenge with its own user and secret', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ minLength: 16, maxLength: 64 }), (myId, myChallengeBytes) => {
      const myChallenge = Buffer.from(myChallengeBytes);
      const { m, id, challenge } = challenged('mutual');
      fc.pre(!myChallenge.equals(challenge));
      const r = step(m, {}, { CHAP_N: CHAP.user, CHAP_R: chapResponse(id, CHAP.secret, challenge), CHAP_I: String(myId), CHAP_C: `0x${myChallenge.toString('hex')}` });
      assertStatus(r, LoginStatus.Success);
      assert.equal(r.transit, true);
      assert.equal(r.keys.get('CHAP_N'), MUTUAL.user);
      assert.equal(r.keys.get('CHAP_R')?.toLowerCase(), chapResponse(myId, MUTUAL.secret, myChallenge));
      // And not with the initiator's secret.
      assert.notEqual(r.keys.get('CHAP_R')?.toLowerCase(), chapResponse(myId, CHAP.secret, myChallenge));
      finish(m);
    }),
    { numRuns: 50 },
  );
});

test('every login gets a fresh challenge: a response recorded from one login does not open another', () => {
  const first = challenged('secure');
  const recorded = chapResponse(first.id, CHAP.secret, first.challenge);
  assertStatus(step(first.m, {}, { CHAP_N: CHAP.user, CHAP_R: recorded }), LoginStatus.Success);
  let replayed = 0;
  for (let i = 0; i < 20; i++) {
    const again = challenged('secure');
    assert.equal(again.challenge.equals(first.challenge), false, 'challenges are not reused');
    const r = step(again.m, {}, { CHAP_N: CHAP.user, CHAP_R: recorded });
    if (r.status === LoginStatus.Success) replayed++;
    else assertStatus(r, LoginStatus.AuthenticationFailure);
  }
  assert.equal(replayed, 0);
});

// ---- Authentication failures (0x0201) -------------------------------------------------------

test('CHAP with a wrong secret, a wrong user or a malformed response is an authentication failure (0x0201)', () => {
  const cases: Array<[string, (id: number, c: Buffer) => Record<string, string>]> = [
    ['wrong secret', (id, c) => ({ CHAP_N: CHAP.user, CHAP_R: chapResponse(id, 'not-the-secret-0', c) })],
    ['wrong user', (id, c) => ({ CHAP_N: 'mallory', CHAP_R: chapResponse(id, CHAP.secret, c) })],
    ['wrong identifier', (id, c) => ({ CHAP_N: CHAP.user, CHAP_R: chapResponse((id + 1) & 0xff, CHAP.secret, c) })],
    ['truncated response', (id, c) => ({ CHAP_N: CHAP.user, CHAP_R: chapResponse(id, CHAP.secret, c).slice(0, 20) })],
    ['not hex', () => ({ CHAP_N: CHAP.user, CHAP_R: 'zzzz' })],
    ['no CHAP_R', () => ({ CHAP_N: CHAP.user })],
  ];
  for (const [why, keys] of cases) {
    const { m, id, challenge } = challenged('secure');
    const r = step(m, {}, keys(id, challenge));
    assertStatus(r, LoginStatus.AuthenticationFailure, why);
    assert.equal(m.authenticated, false);
  }
});

test('mutual CHAP refused when not configured, when our own challenge is reflected back; malformed challenge is an initiator error', () => {
  {
    const { m, id, challenge } = challenged('secure');
    const r = step(m, {}, { CHAP_N: CHAP.user, CHAP_R: chapResponse(id, CHAP.secret, challenge), CHAP_I: '1', CHAP_C: '0x00112233445566778899aabbccddeeff' });
    assertStatus(r, LoginStatus.AuthenticationFailure, 'mutual CHAP asked of a target without it');
  }
  {
    const { m, id, challenge } = challenged('mutual');
    const r = step(m, {}, { CHAP_N: CHAP.user, CHAP_R: chapResponse(id, CHAP.secret, challenge), CHAP_I: String(id), CHAP_C: `0x${challenge.toString('hex')}` });
    assertStatus(r, LoginStatus.AuthenticationFailure, 'reflection');
  }
  for (const [chapI, chapC] of [['256', '0x00112233'], ['x', '0x00112233'], ['1', 'hello']]) {
    const { m, id, challenge } = challenged('mutual');
    const r = step(m, {}, { CHAP_N: CHAP.user, CHAP_R: chapResponse(id, CHAP.secret, challenge), CHAP_I: chapI, CHAP_C: chapC });
    assertStatus(r, LoginStatus.InitiatorError, `CHAP_I=${chapI} CHAP_C=${chapC}`);
  }
});

test('when CHAP is configured, AuthMethod=None, no AuthMethod, or skipping the security stage is an authentication failure (0x0201)', () => {
  for (const target of ['secure', 'mutual']) {
    assertStatus(step(machine(), {}, identity(target, { AuthMethod: 'None' })), LoginStatus.AuthenticationFailure, `${target}: AuthMethod=None`);
    assertStatus(step(machine(), {}, identity(target)), LoginStatus.AuthenticationFailure, `${target}: no AuthMethod`);
    assertStatus(step(machine(), { csg: Stage.Operational, nsg: Stage.FullFeature }, identity(target)), LoginStatus.AuthenticationFailure, `${target}: security stage skipped`);
    // Asking to leave the security stage before CHAP is done does not transit.
    const m = machine();
    const r = step(m, { nsg: Stage.FullFeature }, identity(target, { AuthMethod: 'CHAP' }));
    assertStatus(r, LoginStatus.Success);
    assert.equal(r.transit, false);
    assert.equal(r.complete, false);
  }
  // Only unsupported CHAP algorithms: refused.
  const m = machine();
  assertStatus(step(m, { transit: false }, identity('secure', { AuthMethod: 'CHAP' })), LoginStatus.Success);
  assertStatus(step(m, { transit: false }, { CHAP_A: '6,7' }), LoginStatus.AuthenticationFailure, 'no MD5 in CHAP_A');
  // CHAP offered alone to a target that has no secret to check it with.
  assertStatus(step(machine(), {}, identity('open', { AuthMethod: 'CHAP' })), LoginStatus.AuthenticationFailure, 'CHAP without a configured secret');
  // With None in the list, the open target picks None.
  const open = step(machine(), {}, identity('open', { AuthMethod: 'CHAP,None' }));
  assertStatus(open, LoginStatus.Success);
  assert.equal(open.keys.get('AuthMethod'), 'None');
});

test('CHAP keys out of order are initiator errors (0x0200)', () => {
  const m = machine();
  assertStatus(step(m, { transit: false }, identity('secure', { CHAP_A: '5' })), LoginStatus.AuthenticationFailure, 'CHAP_A without AuthMethod on a CHAP target');
  const m2 = machine();
  assertStatus(step(m2, { transit: false }, identity('secure', { AuthMethod: 'CHAP' })), LoginStatus.Success);
  assertStatus(step(m2, { transit: false }, { CHAP_N: CHAP.user, CHAP_R: '0x00' }), LoginStatus.InitiatorError, 'CHAP_R before a challenge');
  const { m: m3 } = challenged('secure');
  assertStatus(step(m3, { transit: false }, { AuthMethod: 'CHAP' }), LoginStatus.InitiatorError, 'AuthMethod offered twice');
});

// ---- Identity and authorization --------------------------------------------------------------

test('target not found (0x0203), missing InitiatorName or TargetName (0x0207), initiator not allowed (0x0202)', () => {
  assertStatus(step(machine(), {}, identity('nope', { AuthMethod: 'None' })), LoginStatus.NotFound);
  assertStatus(step(machine(), {}, { TargetName: `${PREFIX}:open`, AuthMethod: 'None' }), LoginStatus.MissingParameter, 'no InitiatorName');
  assertStatus(step(machine(), {}, { InitiatorName: '', TargetName: `${PREFIX}:open`, AuthMethod: 'None' }), LoginStatus.InitiatorError, 'empty InitiatorName');
  assertStatus(step(machine(), {}, { InitiatorName: INITIATOR, AuthMethod: 'None' }), LoginStatus.MissingParameter, 'no TargetName in a normal session');
  assertStatus(step(machine(), {}, { AuthMethod: 'None' }), LoginStatus.MissingParameter, 'no identity keys at all');
  assertStatus(step(machine(), {}, identity('restricted', { AuthMethod: 'None' })), LoginStatus.AuthorizationFailure);
  const allowed = step(machine(), {}, { InitiatorName: 'iqn.1994-05.com.example:allowed', TargetName: `${PREFIX}:restricted`, AuthMethod: 'None' });
  assertStatus(allowed, LoginStatus.Success);
});

test('unsupported version (0x0205) and session type (0x0209)', () => {
  assertStatus(step(machine(), { versionMin: 1, versionMax: 2 }, identity('open', { AuthMethod: 'None' })), LoginStatus.UnsupportedVersion);
  assertStatus(step(machine(), {}, identity('open', { AuthMethod: 'None', SessionType: 'Bulk' })), LoginStatus.SessionTypeNotSupported);
});

// ---- Protocol errors during login -------------------------------------------------------------

test('invalid stage transitions, changed ISID/TSIH/CID and C+T together are initiator errors (0x0200)', () => {
  const cases: Array<[string, Partial<LoginRequestFields>]> = [
    ['NSG = CSG', { nsg: Stage.Security }],
    ['NSG 2 (reserved)', { nsg: 2 }],
    ['CSG 3 (full feature)', { csg: Stage.FullFeature, nsg: Stage.FullFeature }],
    ['C and T both set', { cont: true }],
  ];
  for (const [why, f] of cases) assertStatus(step(machine(), f, identity('open', { AuthMethod: 'None' })), LoginStatus.InitiatorError, why);

  for (const [why, f] of [['ISID', { isid: Buffer.from('800000000002', 'hex') }], ['TSIH', { tsih: 5 }], ['CID', { cid: 1 }]] as const) {
    const m = machine();
    assertStatus(step(m, { transit: false }, identity('open', { AuthMethod: 'None' })), LoginStatus.Success);
    assertStatus(step(m, { transit: false, ...f }, {}), LoginStatus.InitiatorError, `${why} changed`);
  }
  // A request in the wrong stage: still security, claims operational.
  const m = machine();
  assertStatus(step(m, { transit: false }, identity('open', { AuthMethod: 'None' })), LoginStatus.Success);
  assertStatus(step(m, { csg: Stage.Operational, nsg: Stage.FullFeature }, {}), LoginStatus.InitiatorError, 'stage skipped without a transition');
  // Security keys in the operational stage.
  const m2 = machine();
  assertStatus(step(m2, {}, identity('open', { AuthMethod: 'None' })), LoginStatus.Success);
  assertStatus(step(m2, { csg: Stage.Operational, nsg: Stage.FullFeature }, { AuthMethod: 'None' }), LoginStatus.InitiatorError, 'AuthMethod in the operational stage');
  // Identity keys may not change.
  const m3 = machine();
  assertStatus(step(m3, { transit: false }, identity('open', { AuthMethod: 'None' })), LoginStatus.Success);
  assertStatus(step(m3, {}, { InitiatorName: 'iqn.1994-05.com.example:other' }), LoginStatus.InitiatorError, 'InitiatorName changed');
});

test('malformed login text is an initiator error; too much text is out of resources (0x0302)', () => {
  const m = machine();
  const r = m.step(req(), Buffer.from(`InitiatorName=${INITIATOR}\0TargetName=${PREFIX}:open\0AuthMethod=None`)); // no final NUL
  assertStatus(r, LoginStatus.InitiatorError);
  const m2 = machine();
  const dup = m2.step(req(), Buffer.from(`InitiatorName=${INITIATOR}\0InitiatorName=${INITIATOR}\0`));
  assertStatus(dup, LoginStatus.InitiatorError, 'a key repeated');
  // C-bit continuation beyond the text limit.
  const m3 = machine();
  const chunk = Buffer.alloc(8192, 0x41);
  let last: LoginReply | undefined;
  for (let sent = 0; sent <= TARGET_LIMITS.maxTextBytes; sent += chunk.length) {
    last = m3.step(req({ transit: false, cont: true }), chunk);
    if (last.status !== LoginStatus.Success) break;
  }
  assertStatus(last!, LoginStatus.OutOfResources);
});

test('text split across Login Requests with the C bit is answered once it is whole', () => {
  const m = machine();
  const text = textData(identity('open', { AuthMethod: 'None', MaxBurstLength: '16384' }));
  const cut = 23; // in the middle of the InitiatorName value
  const r1 = m.step(req({ transit: false, cont: true }), text.subarray(0, cut));
  assertStatus(r1, LoginStatus.Success);
  assert.deepEqual(r1.pairs, [], 'nothing answered for a partial text');
  assert.equal(r1.transit, false);
  const r2 = m.step(req(), text.subarray(cut));
  assertStatus(r2, LoginStatus.Success);
  assert.equal(m.initiatorName, INITIATOR);
  assert.equal(new Map(r2.pairs).get('MaxBurstLength'), '16384');
  assert.equal(r2.transit, true);
});

test('in the operational stage: unknown keys NotUnderstood, bad values Reject, target-only keys Reject; the login still completes', () => {
  const m = machine();
  assertStatus(step(m, {}, identity('open', { AuthMethod: 'None' })), LoginStatus.Success);
  const r = finish(m, { 'X-com.example.Frobnicate': 'Yes', MaxBurstLength: '100', ImmediateData: 'Maybe', TargetAlias: 'me', ErrorRecoveryLevel: '3', FirstBurstLength: '4096' });
  assert.equal(r.keys.get('X-com.example.Frobnicate'), 'NotUnderstood');
  assert.equal(r.keys.get('MaxBurstLength'), 'Reject');
  assert.equal(r.keys.get('ImmediateData'), 'Reject');
  assert.equal(r.keys.get('TargetAlias'), 'Reject');
  assert.equal(r.keys.get('ErrorRecoveryLevel'), 'Reject');
  assert.equal(r.keys.get('FirstBurstLength'), '4096');
  assert.equal(m.params.maxBurstLength, 262144, 'the RFC default stays after a Reject');
  assert.equal(m.params.immediateData, true);
  assert.equal(m.params.errorRecoveryLevel, 0);
});
