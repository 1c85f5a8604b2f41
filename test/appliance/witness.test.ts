/**
 * The witness with a shared key: only requests signed with it count, a replayed or stale one is
 * refused, and a site trusts only answers the witness signed for that very request. Then the
 * real processes: `offsite witness --key-file` and a primary with --witness-key get their lease;
 * a primary with another key stays fenced and says why.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { LeaseBook, MAC_HEADER, requestLease, startWitness, witnessMac } from '../../src/appliance/witness';
import { createLogger } from '../../src/ops/logging';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort } from '../helpers/replication';
import { until } from '../helpers/wait';
import { startWitnessProcess } from '../helpers/witness';

const KEY = Buffer.from('a-witness-key-of-at-least-32-characters');
const OTHER = Buffer.from('another-key-of-at-least-32-characters!!');

test('a keyed witness: signed requests only, no replays or stale times, and answers a site can check', async () => {
  const logger = createLogger('silent');
  const w = await startWitness('127.0.0.1', 0, { leaseMs: 5000, logger, key: KEY, quietMs: 0 });
  const open = await startWitness('127.0.0.1', 0, { leaseMs: 5000, logger, quietMs: 0 });
  const at = `127.0.0.1:${w.address.port}`;
  try {
    const problems: string[] = [];
    const note = (why: string) => problems.push(why);
    assert.deepEqual(await requestLease(at, 'site-a', 'primary', 2000, KEY, note), { granted: true, expiresAt: w.book.holder!.expiresAt, leaseMs: 5000, epoch: w.book.holder!.epoch });
    // Another key, or none: refused by the witness, no lease changes hands.
    assert.equal(await requestLease(at, 'site-b', 'replica', 2000, OTHER, note), undefined);
    assert.match(problems.pop()!, /refused the request: wrong signature/);
    assert.equal(await requestLease(at, 'site-b', 'replica', 2000, undefined, note), undefined);
    assert.match(problems.pop()!, /refused the request: unsigned request/);
    assert.equal(w.book.holder!.siteId, 'site-a');
    // A captured request sent again is a replay; a correctly signed one far from the witness's clock is refused.
    const post = (body: string, mac: string) => fetch(`http://${at}/lease`, { method: 'POST', headers: { 'content-type': 'application/json', [MAC_HEADER]: mac }, body });
    const body = JSON.stringify({ siteId: 'site-a', role: 'primary', timeMs: Date.now() + 1000 });
    assert.equal((await post(body, witnessMac(KEY, 'request', body))).status, 200);
    const again = await post(body, witnessMac(KEY, 'request', body));
    assert.equal(again.status, 401);
    assert.equal(((await again.json()) as { code: string }).code, 'WITNESS_REPLAY');
    const old = JSON.stringify({ siteId: 'site-b', role: 'replica', timeMs: Date.now() - 120_000 });
    const stale = await post(old, witnessMac(KEY, 'request', old));
    assert.equal(((await stale.json()) as { code: string }).code, 'WITNESS_CLOCK');
    // The answer is bound to the request: a site checks it, and takes no answer a keyless witness (or anyone else) gave.
    const res = await post(JSON.stringify({ siteId: 'site-a', role: 'primary', timeMs: Date.now() + 2000 }), 'x');
    assert.equal(res.status, 401);
    assert.equal(res.headers.get(MAC_HEADER), null, 'no signature on an answer to an unsigned request');
    assert.equal(await requestLease(`127.0.0.1:${open.address.port}`, 'site-a', 'primary', 2000, KEY, note), undefined);
    assert.match(problems.pop()!, /unsigned answer .*ignored/);
    assert.deepEqual(problems, []);
  } finally {
    await w.close();
    await open.close();
  }
});

test('a witness grants nothing during its first lease (a holder from before a restart may still be alive); sites treat that as no answer', async () => {
  const book = new LeaseBook(1000, 5000);
  assert.deepEqual(book.request('site-a', 'primary', 4000), { granted: false, quietForMs: 1000 });
  assert.equal(book.request('site-b', 'replica', 5000).granted, true);
  const logger = createLogger('silent');
  const w = await startWitness('127.0.0.1', 0, { leaseMs: 60_000, logger, key: KEY });
  try {
    const problems: string[] = [];
    assert.equal(await requestLease(`127.0.0.1:${w.address.port}`, 'site-b', 'replica', 2000, KEY, (p) => problems.push(p)), undefined);
    assert.match(problems[0], /is starting: the witness started less than a lease ago: no grants for \d+ ms more/);
    assert.equal(w.book.holder, undefined);
  } finally {
    await w.close();
  }
});

test('offsite witness --key-file and a primary with --witness-key: the lease is granted; a primary with another key stays fenced and logs why', { timeout: 60_000 }, async () => {
  process.env.OFFSITE_WITNESS_LEASE_MS = '2000';
  const dir = tempDir();
  const keyFile = path.join(dir, 'witness.key');
  const otherFile = path.join(dir, 'other.key');
  for (const f of [keyFile, otherFile]) {
    const r = await run(process.execPath, [CLI, 'keygen', '--witness-key', f]);
    assert.equal(r.code, 0, r.stderr);
  }
  const port = await freePort();
  const witness = await startWitnessProcess(port, ['--key-file', keyFile]);
  const witnessLogs = witness.logs;
  assert.equal(witnessLogs.find((l) => l.msg === 'witness ready')?.authenticated, true);
  const good = await startAppliance({ dataDir: path.join(dir, 'a'), volumes: ['v:1M'], args: ['--witness', `127.0.0.1:${port}`, '--witness-key', keyFile] });
  const bad = await startAppliance({ dataDir: path.join(dir, 'b'), volumes: ['v:1M'], args: ['--witness', `127.0.0.1:${port}`, '--witness-key', otherFile] });
  try {
    type W = { witness: { authenticated: boolean; fenced: boolean; reachable: boolean } };
    await until('the primary with the right key to hold the lease', async () => !((await good.status()) as W).witness.fenced, 15_000, 100);
    assert.equal(((await good.status()) as W).witness.authenticated, true);
    await new Promise((r) => setTimeout(r, 1500));
    const b = (await bad.status()) as W;
    assert.equal(b.witness.fenced, true, 'a site whose requests the witness refuses gets no lease');
    assert.equal(b.witness.reachable, false);
    assert.ok(bad.logs.some((l) => /refused the request: wrong signature/.test(String(l.msg))), 'the site says why');
    assert.ok(witnessLogs.some((l) => /request refused: wrong signature/.test(String(l.msg)) && l.peer), 'the witness logs the refusal with the peer');
    // The witness's own metrics, as Prometheus reads them.
    const goodSite = String((await good.status()).siteId);
    const m = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(m, /^offsite_witness_lease_held 1$/m);
    assert.match(m, new RegExp(`^offsite_witness_lease_holder_info\\{site_id="${goodSite}",role="primary"\\} 1$`, 'm'));
    assert.match(m, /^offsite_witness_authenticated 1$/m);
    assert.ok(Number(/^offsite_witness_grants_total (\d+)$/m.exec(m)?.[1]) > 0, 'grants counted');
    assert.ok(Number(/^offsite_witness_refused_total\{reason="unauthorized"\} (\d+)$/m.exec(m)?.[1]) > 0, 'the other key\'s requests counted as unauthorized');
    const check = await run('promtool', ['check', 'metrics'], { input: m });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    // What an operator sees.
    let st = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${good.httpPort}`]);
    assert.match(st.stdout, /^witness: +127\.0\.0\.1:\d+ reachable, authenticated; writes accepted$/m);
    st = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${bad.httpPort}`]);
    assert.match(st.stdout, /^witness: +127\.0\.0\.1:\d+ UNREACHABLE, authenticated; FENCED \(writes refused: waiting for the witness lease\)$/m);
    // Key files follow the other secrets' rules.
    writeFileSync(path.join(dir, 'short.key'), 'too-short\n', { mode: 0o600 });
    const r = await run(process.execPath, [CLI, 'serve', '--data', path.join(dir, 'c'), '--iscsi', '127.0.0.1:0', '--http', '127.0.0.1:0', '--volume', 'v:1M', '--witness', `127.0.0.1:${port}`, '--witness-key', path.join(dir, 'short.key')]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /witness-key: .* holds 9 characters; use at least 32/);
  } finally {
    await good.stop();
    await bad.stop();
    await witness.stop();
    delete process.env.OFFSITE_WITNESS_LEASE_MS;
    removeDir(dir);
  }
});

test('a witness timing another lease length than the site: its answers are not used, and the site says why', async () => {
  const w = await startWitness('127.0.0.1', 0, { leaseMs: 4000, quietMs: 0, logger: createLogger('silent'), key: KEY });
  try {
    const at = `127.0.0.1:${w.address.port}`;
    const problems: string[] = [];
    assert.equal(await requestLease(at, 'site-a', 'primary', 2000, KEY, (p) => problems.push(p), 6000), undefined);
    assert.match(problems[0], /grants leases of 4000 ms but this site times 6000 ms: its answers are not used/);
    // The witness did grant site-a (it cannot know the site ignores the answer): a refusal to
    // site-b timed otherwise is not used either; timed alike, it is.
    assert.equal(await requestLease(at, 'site-b', 'replica', 2000, KEY, (p) => problems.push(p), 6000), undefined);
    assert.equal(problems.length, 2);
    const refused = await requestLease(at, 'site-b', 'replica', 2000, KEY, undefined, 4000);
    assert.equal(refused?.granted, false);
    assert.equal(refused?.holder, 'site-a');
  } finally {
    await w.close();
  }
});
