/**
 * CHAP and header digests against the real appliance with real initiators (libiscsi's
 * iscsi-inq, qemu-img, qemu-io): one-way CHAP right, wrong and missing; mutual CHAP right and
 * wrong; HeaderDigest=CRC32C with data that round-trips and digests verified on the captured
 * wire; and no secret in any log line, in /status or in /metrics.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { removeDir, startAppliance, tempDir, TARGET_PREFIX, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { walkFrames } from '../helpers/iscsi-wire';
import { WireTap } from '../helpers/wire-tap';

const CHAP_USER = 'alice-initiator';
const CHAP_SECRET = 'one-way-secret-7f3a9c51';
const MUTUAL_USER = 'offsite-target';
const MUTUAL_SECRET = 'mutual-secret-b2d4e1c8';
const SECRETS = [CHAP_SECRET, MUTUAL_SECRET];
const ALLOWED_IQN = 'iqn.2026-11.dev.offsite.test:allowed-host';

let app: RunningAppliance;
let dir: string;
let stderr = '';

before(async () => {
  dir = tempDir();
  const config = path.join(dir, 'site.yaml');
  // Every target needs CHAP and can prove itself back, except those with their own entry: "open"
  // needs nothing, "oneway" needs CHAP but has no mutual secret.
  writeFileSync(
    config,
    [
      'auth:',
      `  chap: { user: ${CHAP_USER}, secret: "${CHAP_SECRET}" }`,
      `  mutualChap: { user: ${MUTUAL_USER}, secret: "${MUTUAL_SECRET}" }`,
      'targets:',
      '  open: {}',
      `  oneway: { chap: { user: ${CHAP_USER}, secret: "${CHAP_SECRET}" } }`,
      `  acl: { allowedInitiators: [${ALLOWED_IQN}] }`,
      '',
    ].join('\n'),
  );
  app = await startAppliance({ dataDir: path.join(dir, 'data'), volumes: ['secure:16M', 'open:8M', 'oneway:8M', 'acl:8M'], args: ['--config', config, '--log-level', 'trace'] });
  app.proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
});

after(async () => {
  await app?.stop();
  if (dir) removeDir(dir);
});

const creds = (user: string, secret: string) => `${encodeURIComponent(user)}%${encodeURIComponent(secret)}`;

/** Log records after `mark` matching `pred`, waiting up to `timeoutMs` for one to arrive (logs come through a pipe). */
async function logsAfter(mark: number, pred: (r: Record<string, unknown>) => boolean, timeoutMs = 3000): Promise<Record<string, unknown>[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = app.logs.slice(mark).filter(pred);
    if (found.length || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
}
const refused = (r: Record<string, unknown>) => r.msg === 'login refused';
const loggedIn = (r: Record<string, unknown>) => r.msg === 'login';

test('one-way CHAP with the right secret: iscsi-inq and qemu-img get in', async () => {
  const mark = app.logs.length;
  const inq = await run('iscsi-inq', [app.url('secure', 0, creds(CHAP_USER, CHAP_SECRET))], { timeoutMs: 20_000 });
  assert.equal(inq.code, 0, inq.stderr);
  assert.match(inq.stdout, /Vendor:OFFSITE/);
  const info = await run('qemu-img', ['info', '--output=json', app.url('secure', 0, creds(CHAP_USER, CHAP_SECRET))], { timeoutMs: 20_000 });
  assert.equal(info.code, 0, info.stderr);
  assert.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], 16 * 1024 * 1024);
  const logins = await logsAfter(mark, (r) => loggedIn(r) && r.target === `${TARGET_PREFIX}:secure`);
  assert.ok(logins.length >= 2, 'both logins logged');
  for (const l of logins) assert.equal(l.chap, true, 'the login is recorded as CHAP-authenticated');
});

test('one-way CHAP with a wrong secret, a wrong user, or no credentials: refused with status 0x0201', async () => {
  for (const [why, c] of [['wrong secret', creds(CHAP_USER, 'wrong-secret-00000')], ['wrong user', creds('mallory', CHAP_SECRET)], ['no credentials', undefined]] as const) {
    const mark = app.logs.length;
    const inq = await run('iscsi-inq', [app.url('secure', 0, c)], { timeoutMs: 20_000 });
    assert.notEqual(inq.code, 0, `${why}: iscsi-inq must fail`);
    assert.doesNotMatch(inq.stdout, /Vendor:OFFSITE/, why);
    // libiscsi reports the status class/detail: 513 = 0x0201 authentication failure.
    assert.match(inq.stderr, /Authentication failure\(513\)/, why);
    const lines = await logsAfter(mark, refused);
    assert.equal(lines.length, 1, `${why}: one 'login refused' line`);
    assert.equal(lines[0].status, '0x0201', why);
    assert.equal(lines[0].target, `${TARGET_PREFIX}:secure`);
    const noLogin = app.logs.slice(mark).filter(loggedIn);
    assert.deepEqual(noLogin, [], `${why}: no session was opened`);
  }
  // qemu-img without credentials: refused too.
  const info = await run('qemu-img', ['info', app.url('secure')], { timeoutMs: 20_000 });
  assert.notEqual(info.code, 0);
});

test('a target without CHAP configured takes initiators without credentials (the control for the refusals above)', async () => {
  const inq = await run('iscsi-inq', [app.url('open')], { timeoutMs: 20_000 });
  assert.equal(inq.code, 0, inq.stderr);
  assert.match(inq.stdout, /Vendor:OFFSITE/);
});

test('initiator ACL by IQN: the listed initiator gets in, any other is refused with 0x0202 and logged by name', async () => {
  let inq = await run('iscsi-inq', ['-i', ALLOWED_IQN, app.url('acl')], { timeoutMs: 20_000 });
  assert.equal(inq.code, 0, inq.stderr);
  assert.match(inq.stdout, /Vendor:OFFSITE/);
  const mark = app.logs.length;
  const stranger = 'iqn.2026-11.dev.offsite.test:stranger';
  inq = await run('iscsi-inq', ['-i', stranger, app.url('acl')], { timeoutMs: 20_000 });
  assert.notEqual(inq.code, 0);
  assert.doesNotMatch(inq.stdout, /Vendor:OFFSITE/);
  const lines = await logsAfter(mark, refused);
  assert.equal(lines.length, 1, JSON.stringify(app.logs.slice(mark)));
  assert.equal(lines[0].status, '0x0202');
  assert.equal(lines[0].target, `${TARGET_PREFIX}:acl`);
  assert.match(JSON.stringify(lines[0]), new RegExp(stranger.replace(/[.:]/g, '\\$&')));
  // qemu-img with the default initiator name (not listed) is refused as well.
  const info = await run('qemu-img', ['info', app.url('acl')], { timeoutMs: 20_000 });
  assert.notEqual(info.code, 0);
});

test('mutual CHAP: the right target secret is accepted by libiscsi, a wrong one makes the initiator abort', async () => {
  const base = app.url('secure', 0, creds(CHAP_USER, CHAP_SECRET));
  const mark = app.logs.length;
  const good = await run('iscsi-inq', [`${base}?target_user=${MUTUAL_USER}&target_password=${encodeURIComponent(MUTUAL_SECRET)}`], { timeoutMs: 20_000 });
  assert.equal(good.code, 0, good.stderr);
  assert.match(good.stdout, /Vendor:OFFSITE/);
  assert.ok((await logsAfter(mark, loggedIn)).length >= 1);

  // The target proves a secret the initiator does not expect: libiscsi refuses to go on.
  const wrong = await run('iscsi-inq', [`${base}?target_user=${MUTUAL_USER}&target_password=not-the-target-secret`], { timeoutMs: 20_000 });
  assert.notEqual(wrong.code, 0);
  assert.doesNotMatch(wrong.stdout, /Vendor:OFFSITE/);
  assert.match(wrong.stderr, /CHAP_R/);

  // One-way CHAP still works on a target without a mutual secret...
  const oneway = await run('iscsi-inq', [app.url('oneway', 0, creds(CHAP_USER, CHAP_SECRET))], { timeoutMs: 20_000 });
  assert.equal(oneway.code, 0, oneway.stderr);
  // ...but asking it to prove itself is refused by the target (0x0201).
  const mark2 = app.logs.length;
  const noMutual = await run('iscsi-inq', [`${app.url('oneway', 0, creds(CHAP_USER, CHAP_SECRET))}?target_user=${MUTUAL_USER}&target_password=${encodeURIComponent(MUTUAL_SECRET)}`], { timeoutMs: 20_000 });
  assert.notEqual(noMutual.code, 0);
  assert.match(noMutual.stderr, /Authentication failure\(513\)/);
  assert.equal((await logsAfter(mark2, refused))[0]?.status, '0x0201');
});

test('HeaderDigest=CRC32C with CHAP (qemu-io --image-opts): data round-trips and every full-feature PDU on the wire carries a valid header digest', async () => {
  const tap = new WireTap(app.iscsiPort);
  const tapPort = await tap.listen();
  try {
    const opts = (port: number, digest: string) =>
      `driver=iscsi,transport=tcp,portal=127.0.0.1:${port},target=${TARGET_PREFIX}:secure,lun=0,header-digest=${digest},user=${CHAP_USER},password-secret=sec0`;
    const secretObject = ['--object', `secret,id=sec0,data=${CHAP_SECRET}`];
    const mark = app.logs.length;
    const io = await run('qemu-io', [...secretObject, '--image-opts', opts(tapPort, 'crc32c'), '-c', 'write -P 0x3c 8k 192k', '-c', 'read -P 0x3c 8k 192k', '-c', 'read -P 0 0 8k'], { timeoutMs: 30_000 });
    assert.equal(io.code, 0, io.stderr);
    assert.doesNotMatch(io.stdout + io.stderr, /verification failed|error/i);
    const login = (await logsAfter(mark, (r) => loggedIn(r) && r.headerDigest === true))[0];
    assert.ok(login, 'the session negotiated HeaderDigest=CRC32C');
    assert.equal(login.chap, true);

    // What went over the wire: login PDUs without digests, then every PDU with a correct CRC32C.
    assert.equal(tap.connections.length, 1);
    const c = tap.connections[0];
    for (const [dir, bytes, loginOp] of [['initiator → target', Buffer.concat(c.up), 0x03], ['target → initiator', Buffer.concat(c.down), 0x23]] as const) {
      const plain = walkFrames(bytes, { digestsFromFrame: Infinity, headerDigest: false, dataDigest: false });
      const logins = plain.findIndex((f) => f.opcode !== loginOp);
      assert.ok(logins > 0, `${dir}: login PDUs first`);
      const frames = walkFrames(bytes, { digestsFromFrame: logins, headerDigest: true, dataDigest: false });
      const ffp = frames.slice(logins);
      assert.ok(ffp.length >= 4, `${dir}: ${ffp.length} full-feature PDUs`);
      assert.ok(ffp.every((f) => f.headerDigestOk === true), `${dir}: every header digest present and correct`);
      const end = ffp[ffp.length - 1];
      assert.equal(end.offset + 48 + 4 + end.dataLength + ((4 - (end.dataLength % 4)) % 4), bytes.length, `${dir}: the walk consumed every byte`);
    }
    // The data digest was not negotiated (libiscsi does not do it): the data went without one.
    assert.equal(login.dataDigest, false);

    // Another session, without digests, reads what the digest session wrote.
    const check = await run('qemu-io', [...secretObject, '--image-opts', opts(app.iscsiPort, 'none'), '-c', 'read -P 0x3c 8k 192k', '-c', 'read -P 0 200k 8k'], { timeoutMs: 30_000 });
    assert.equal(check.code, 0, check.stderr);
    assert.doesNotMatch(check.stdout + check.stderr, /verification failed|error/i);
    // The control: a wrong pattern is detected.
    const wrong = await run('qemu-io', [...secretObject, '--image-opts', opts(app.iscsiPort, 'crc32c'), '-c', 'read -P 0x3d 8k 4k'], { timeoutMs: 30_000 });
    assert.match(wrong.stdout + wrong.stderr, /Pattern verification failed/);
  } finally {
    await tap.close();
  }
});

test('no secret appears in the logs (at trace level), on stderr, in /status or in /metrics', async () => {
  // The tests above ran first: failed and successful CHAP logins, mutual CHAP, digests.
  assert.ok(app.logs.some(refused), 'the log holds the refused logins');
  assert.ok(app.logs.some((r) => loggedIn(r) && r.chap === true));
  const logText = app.logs.map((r) => JSON.stringify(r)).join('\n');
  // The log does name the users (so this is the log that saw the logins), never the secrets.
  assert.match(logText, /mallory/, 'the failed login for user mallory is logged');
  const status = JSON.stringify(await app.status());
  const metrics = await (await fetch(`http://127.0.0.1:${app.httpPort}/metrics`)).text();
  for (const secret of SECRETS) {
    const forms = [secret, Buffer.from(secret).toString('hex'), Buffer.from(secret).toString('base64'), encodeURIComponent(secret)];
    for (const form of forms) {
      for (const [where, text] of [['log', logText], ['stderr', stderr], ['/status', status], ['/metrics', metrics]] as const) {
        assert.equal(text.includes(form), false, `${where} contains a secret (${form.slice(0, 4)}…)`);
      }
    }
  }
});
