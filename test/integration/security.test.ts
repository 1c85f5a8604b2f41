/**
 * Issue 6 security, with real peers: the replication link is TLS 1.3 with a pre-shared key (a
 * replica with another key is refused before any journal data flows, and it is logged);
 * plain text only with --insecure-link; the admin API needs a bearer token; secrets and data
 * directories are owner-only; the HTTP API can be HTTPS with the operator's certificate.
 */
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { httpsRequest, selfSignedCert } from '../helpers/tls';

async function keygen(file: string): Promise<void> {
  const r = await run(process.execPath, [CLI, 'keygen', '--link-key', file]);
  assert.equal(r.code, 0, r.stderr);
}

test('replication link: a replica with a different key is refused before any data flows; the right key replicates', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const good = path.join(dir, 'good.key');
  const bad = path.join(dir, 'bad.key');
  await keygen(good);
  await keygen(bad);
  assert.equal(statSync(good).mode & 0o777, 0o600);
  const again = await run(process.execPath, [CLI, 'keygen', '--link-key', good]);
  assert.notEqual(again.code, 0, 'keygen must not overwrite a key both sites share');
  assert.match(again.stderr, /exists/);
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort, ['--link-key', good]);
  let primary = await startPrimary(path.join(dir, 'a'), ['sec:16M'], replPort, ['--link-key', bad]);
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 1M', primary.url('sec')]);
    assert.equal(r.code, 0, r.stderr);
    await new Promise((res) => setTimeout(res, 1500));
    const ps = await primary.status();
    assert.equal((ps.link as { connected: boolean }).connected, false);
    assert.match(String((ps.link as { lastError: string }).lastError), /handshake|TLS|alert|ECONNRESET|socket/i);
    const rs = await replica.status();
    assert.deepEqual(rs.volumes, [], 'nothing (not even the volume list) reached the replica');
    assert.ok(replica.logs.some((l) => l.msg === 'replication peer refused: TLS handshake failed (wrong link key?)'), 'the refusal is logged');
    const logged = JSON.stringify(replica.logs) + JSON.stringify(primary.logs);
    for (const k of [good, bad]) {
      const psk = (JSON.parse((await import('node:fs')).readFileSync(k, 'utf8')) as { psk: string }).psk;
      assert.ok(!logged.includes(psk), 'a key appears in the logs');
    }
    await primary.stop();
    primary = await startPrimary(path.join(dir, 'a'), [], replPort, ['--link-key', good]);
    await waitCaughtUp(primary, replica);
    r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x42 0 1M', replica.url('sec')]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('replication needs a key or an explicit --insecure-link; a key file others can read is refused', async () => {
  const dir = tempDir();
  try {
    let r = await run(process.execPath, [CLI, 'serve', '--data', path.join(dir, 'x'), '--volume', 'v:1M', '--iscsi', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replicate-to', '127.0.0.1:9']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--link-key FILE .*--insecure-link/);
    const loose = path.join(dir, 'loose.key');
    writeFileSync(loose, JSON.stringify({ identity: 'offsite-link', psk: randomBytes(32).toString('hex') }));
    chmodSync(loose, 0o644);
    r = await run(process.execPath, [CLI, 'serve', '--data', path.join(dir, 'y'), '--role', 'replica', '--iscsi', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replication-listen', '127.0.0.1:0', '--link-key', loose]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /readable by others/);
  } finally {
    removeDir(dir);
  }
});

test('admin API: refused without a token, with a wrong one, and when none is configured; accepted with the right one', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const primary = await startPrimary(path.join(dir, 'a'), ['adm:8M'], replPort);
  const noAdmin = await startAppliance({ dataDir: path.join(dir, 'n'), volumes: ['v:1M'], env: { OFFSITE_ADMIN_TOKEN: '' } });
  try {
    const url = `http://127.0.0.1:${primary.httpPort}/bandwidth`;
    const post = (headers: Record<string, string>) => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ rate: '5MB/s' }) });
    let res = await post({});
    assert.equal(res.status, 401);
    res = await post({ authorization: 'Bearer not-the-token-at-all-123' });
    assert.equal(res.status, 401);
    assert.equal(((await primary.status()).link as { maxBandwidthBytesPerSec: number }).maxBandwidthBytesPerSec, 0, 'a refused call changed nothing');
    res = await post({ authorization: `Bearer ${ADMIN_TOKEN}` });
    assert.equal(res.status, 200);
    assert.equal(((await primary.status()).link as { maxBandwidthBytesPerSec: number }).maxBandwidthBytesPerSec, 5_000_000);
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('admin call refused from')));
    assert.ok(!JSON.stringify(primary.logs).includes(ADMIN_TOKEN), 'the token appears in the logs');
    // The CLI sends the token (from OFFSITE_ADMIN_TOKEN here); without it, it is refused.
    let r = await run(process.execPath, [CLI, 'bandwidth', '--http', `127.0.0.1:${primary.httpPort}`, 'unlimited']);
    assert.equal(r.code, 0, r.stderr);
    r = await run(process.execPath, [CLI, 'bandwidth', '--http', `127.0.0.1:${primary.httpPort}`, '1MB/s'], { env: { ...process.env, OFFSITE_ADMIN_TOKEN: '' } });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no bearer token/);
    // No token configured: the admin API is off; status and metrics stay open.
    res = await fetch(`http://127.0.0.1:${noAdmin.httpPort}/promote`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(res.status, 403);
    assert.equal(((await res.json()) as { code: string }).code, 'ADMIN_DISABLED');
    assert.equal((await fetch(`http://127.0.0.1:${noAdmin.httpPort}/status`)).status, 200);
    // Owner-only data directories and identity files.
    assert.equal(statSync(path.join(dir, 'a')).mode & 0o777, 0o700);
    assert.equal(statSync(path.join(dir, 'a', 'offsite.json')).mode & 0o777, 0o600);
  } finally {
    await primary.stop();
    await noAdmin.stop();
    removeDir(dir);
  }
});

test('--metrics-listen: /status, /metrics, /history and /healthz on a second address, where admin calls are refused even with the token', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const app = await startAppliance({ dataDir: path.join(dir, 'm'), volumes: ['v:1M'], args: ['--metrics-listen', '127.0.0.1:0'] });
  try {
    const ready = app.logs.find((l) => l.msg === 'ready');
    const mon = Number(String(ready?.metricsListen).split(':').pop());
    assert.ok(mon > 0 && mon !== app.httpPort, `the monitoring address is logged at start: ${JSON.stringify(ready)}`);
    const base = `http://127.0.0.1:${mon}`;
    const status = (await (await fetch(`${base}/status`)).json()) as { role: string; volumes: { name: string }[] };
    assert.equal(status.role, 'primary');
    assert.deepEqual(status.volumes.map((v) => v.name), ['v']);
    const metrics = await fetch(`${base}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^offsite_iscsi_sessions\b/m);
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    const history = (await (await fetch(`${base}/history?bucket=10`)).json()) as { role: string; bucketSeconds: number };
    assert.deepEqual([history.role, history.bucketSeconds], ['primary', 10]);
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };
    for (const route of ['/bandwidth', '/rpo', '/promote', '/demote', '/test-failover', '/replicate-to', '/verify', '/pause', '/resume', '/resize', '/volumes', '/volumes/remove', '/bookmarks']) {
      const res = await fetch(base + route, { method: 'POST', headers: auth, body: JSON.stringify({ rate: '1MB/s', name: 'w', volume: 'v', size: '2M' }) });
      assert.equal(res.status, 403, route);
      assert.equal(((await res.json()) as { code: string }).code, 'ADMIN_NOT_HERE');
    }
    assert.ok(app.logs.some((l) => String(l.msg).startsWith('admin calls are not served on this address')));
    const after = (await (await fetch(`${base}/status`)).json()) as { volumes: { name: string; sizeBytes: number }[] };
    assert.deepEqual(after.volumes.map((v) => [v.name, v.sizeBytes]), [['v', 1 << 20]], 'nothing was added or grown through the monitoring address');
    // The main address keeps the admin API (here: a primary without a replica refuses promote for its own reason).
    const res = await fetch(`http://127.0.0.1:${app.httpPort}/promote`, { method: 'POST', headers: auth, body: '{}' });
    assert.equal(((await res.json()) as { code: string }).code, 'NOT_REPLICA');
  } finally {
    await app.stop();
    removeDir(dir);
  }
});

test('HTTPS: status, metrics and admin calls over TLS with the operator\'s certificate; plain HTTP and clients that distrust it are refused and logged; bad certificate files are configuration errors', { timeout: 90_000 }, async () => {
  const dir = tempDir();
  const { cert, key } = await selfSignedCert(dir);
  const ca = readFileSync(cert);
  const app = await startPrimary(path.join(dir, 'a'), ['v:8M'], await freePort(), ['--http-tls-cert', cert, '--http-tls-key', key, '--metrics-listen', '127.0.0.1:0']);
  try {
    const ready = app.logs.find((l) => l.msg === 'ready');
    assert.equal(ready?.httpTls, true, JSON.stringify(ready));
    const base = `https://127.0.0.1:${app.httpPort}`;
    // The CLI, trusting the certificate (--ca, or OFFSITE_CA).
    let r = await run(process.execPath, [CLI, 'status', '--http', base, '--ca', cert]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^role:\s+primary/m);
    r = await run(process.execPath, [CLI, 'bandwidth', '--http', base, '5MB/s'], { env: { ...process.env, OFFSITE_CA: cert } });
    assert.equal(r.code, 0, r.stderr);
    const status = await httpsRequest(`${base}/status`, ca);
    assert.equal(status.status, 200);
    assert.equal((JSON.parse(status.body) as { link: { maxBandwidthBytesPerSec: number } }).link.maxBandwidthBytesPerSec, 5_000_000);
    // The token is still required over TLS.
    const refused = await httpsRequest(`${base}/bandwidth`, ca, { method: 'POST', headers: { authorization: 'Bearer not-the-token-at-all-123', 'content-type': 'application/json' }, body: '{"rate":"1MB/s"}' });
    assert.equal(refused.status, 401);
    // A client that does not trust the certificate, and one speaking plain HTTP: clear errors, no data.
    r = await run(process.execPath, [CLI, 'status', '--http', base], { env: { ...process.env, OFFSITE_CA: '' } });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /self-signed certificate.*--ca FILE/);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${app.httpPort}`]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /is it serving HTTPS\?/);
    await assert.rejects(fetch(`http://127.0.0.1:${app.httpPort}/status`));
    assert.ok(app.logs.some((l) => String(l.msg).startsWith('https: TLS handshake refused') && l.peer === '127.0.0.1'), 'the refusals are logged with the peer');
    // The monitoring address is HTTPS too; the appliance went on serving throughout.
    const mon = Number(String(ready?.metricsListen).split(':').pop());
    const metrics = await httpsRequest(`https://127.0.0.1:${mon}/metrics`, ca);
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^offsite_iscsi_sessions\b/m);
    assert.equal((await httpsRequest(`${base}/healthz`, ca)).status, 200);
  } finally {
    await app.stop();
  }
  // Configuration errors, before anything is served (exit 2).
  const other = await selfSignedCert(dir, 'other');
  const open = path.join(dir, 'open-key.pem');
  copyFileSync(key, open);
  chmodSync(open, 0o644);
  const cases: [string[], RegExp][] = [
    [['--http-tls-cert', cert], /give both --http-tls-cert FILE and --http-tls-key FILE/],
    [['--http-tls-cert', cert, '--http-tls-key', other.key], /the key does not belong to the certificate/],
    [['--http-tls-cert', cert, '--http-tls-key', open], /readable by others \(mode 644\); chmod 600 it/],
    [['--http-tls-cert', path.join(dir, 'missing.pem'), '--http-tls-key', key], /http-tls-cert: cannot read/],
  ];
  for (const [args, message] of cases) {
    const c = await run(process.execPath, [CLI, 'serve', '--data', path.join(dir, 'x'), '--iscsi', '127.0.0.1:0', '--http', '127.0.0.1:0', '--volume', 'v:1M', ...args]);
    assert.equal(c.code, 2, `${args.join(' ')}: ${c.stderr}`);
    assert.match(c.stderr, message);
  }
  removeDir(dir);
});

test('iSCSI logins are rate-limited per source: after repeated refusals even the right secret is dropped for a while', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const app = await startAppliance({
    dataDir: path.join(dir, 'd'),
    volumes: ['rl:4M'],
    env: { OFFSITE_CHAP_USER: 'alice', OFFSITE_CHAP_SECRET: 'correct-horse-battery', OFFSITE_LOGIN_RATE_LIMIT: '4/60/3' },
  });
  try {
    const good = app.url('rl', 0, 'alice%correct-horse-battery');
    const bad = app.url('rl', 0, 'alice%wrong-secret-1234');
    let r = await run('iscsi-inq', [good]);
    assert.equal(r.code, 0, r.stderr);
    for (let i = 0; i < 4; i++) {
      r = await run('iscsi-inq', [bad]);
      assert.notEqual(r.code, 0);
    }
    r = await run('iscsi-inq', [good]);
    assert.notEqual(r.code, 0, 'the right secret must be refused while the source is blocked');
    assert.ok(app.logs.some((l) => String(l.msg).startsWith('login rate limit')), 'the block is logged');
    assert.ok(!JSON.stringify(app.logs).includes('correct-horse-battery'));
    await new Promise((res) => setTimeout(res, 3200));
    r = await run('iscsi-inq', [good]);
    assert.equal(r.code, 0, `after the block: ${r.stderr}`);
  } finally {
    await app.stop();
    removeDir(dir);
  }
});
