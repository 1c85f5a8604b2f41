/**
 * `offsite witness --state FILE` (src/appliance/witness.ts): the witness keeps its incarnation,
 * its count of holders and the last holder on disk, so a restart does not hand the lease back to
 * a site it had moved on from, and epochs granted before the restart stay valid.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { LeaseBook, MAC_HEADER, readWitnessState, requestLease, startWitness, witnessMac, WitnessStateError } from '../../src/appliance/witness';
import { createLogger } from '../../src/ops/logging';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort } from '../helpers/replication';
import { until } from '../helpers/wait';
import { startWitnessProcess } from '../helpers/witness';

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

test('a lease book restored from its state refuses the site the lease moved on from, keeps the holder\'s epoch and numbers new ones after the old', () => {
  const book = new LeaseBook(1000, 0, 'w1');
  const a = book.request('site-a', 'primary', 0);
  assert.ok(a.granted);
  const b = book.request('site-b', 'replica', 1500);
  assert.ok(b.granted && b.takeover);
  assert.equal(book.changes, 2);
  const state = book.state();
  assert.deepEqual(state, { version: 1, incarnation: 'w1', holders: 2, holder: { siteId: 'site-b', role: 'replica', epoch: 'w1:2', grantedAt: 1500 } });
  // A restart: another clock, a quiet lease, the state given back.
  const again = new LeaseBook(1000, 100, 'ignored', state);
  assert.equal(again.incarnation, 'w1');
  assert.ok('quietForMs' in again.request('site-b', 'primary', 50, 'w1:2'), 'nothing granted during the quiet lease');
  const late = again.request('site-a', 'primary', 200, a.lease.epoch);
  assert.ok(!late.granted && 'holder' in late && late.superseded === true && late.holder.siteId === 'site-b');
  const renew = again.request('site-b', 'primary', 201, 'w1:2');
  assert.ok(renew.granted && !renew.takeover && renew.lease.epoch === 'w1:2');
  // B falls silent; a claim takes the expired lease under the next epoch.
  const claim = again.request('site-c', 'replica', 5000);
  assert.ok(claim.granted && claim.takeover && claim.lease.epoch === 'w1:3');
});

test('a state file that is not a witness\'s is refused with its name and what to do', async () => {
  const dir = tempDir();
  try {
    const f = path.join(dir, 'state.json');
    assert.equal(await readWitnessState(f), undefined, 'no file: a fresh start');
    for (const [content, why] of [
      ['{"version":1,', /cannot be read/],
      ['[]', /no incarnation|version/],
      ['{"version":2,"incarnation":"a","holders":0,"holder":null}', /version 2/],
      ['{"version":1,"incarnation":"a","holders":-1,"holder":null}', /count of holders/],
      ['{"version":1,"incarnation":"a","holders":1,"holder":{"siteId":"s","role":"primary","epoch":"b:1","grantedAt":0}}', /epoch of this incarnation/],
    ] as [string, RegExp][]) {
      writeFileSync(f, content);
      await assert.rejects(readWitnessState(f), (e: unknown) => e instanceof WitnessStateError && e.code === 'WITNESS_STATE_INVALID' && why.test(e.message) && e.message.includes(f) && /move it aside/.test(e.message), content);
    }
    // The command says so and exits before serving.
    const r = await run(process.execPath, [CLI, 'witness', '--listen', '127.0.0.1:0', '--state', f], { timeoutMs: 20_000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /witness state .*state\.json is not usable.*WITNESS_STATE_INVALID/);
  } finally {
    removeDir(dir);
  }
});

test('one state file, one witness: a second witness given the same file refuses to start while the first runs; a file a killed witness left is taken over', async () => {
  const dir = tempDir();
  const f = path.join(dir, 'state.json');
  const logger = createLogger('silent');
  const w = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger, quietMs: 0, stateFile: f });
  try {
    assert.equal(readFileSync(`${f}.pid`, 'utf8').trim(), String(process.pid));
    // Another process (the CLI) with the same file.
    const r = await run(process.execPath, [CLI, 'witness', '--listen', '127.0.0.1:0', '--state', f], { timeoutMs: 20_000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`in use by another witness \\(pid ${process.pid}\\).*WITNESS_STATE_LOCKED`));
  } finally {
    await w.close();
  }
  assert.throws(() => readFileSync(`${f}.pid`), /ENOENT/, 'a witness that stopped leaves no pid file');
  // A pid file naming a process that is gone (a killed witness): taken over.
  writeFileSync(`${f}.pid`, '999999999\n');
  const again = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger, quietMs: 0, stateFile: f });
  try {
    assert.equal(readFileSync(`${f}.pid`, 'utf8').trim(), String(process.pid));
  } finally {
    await again.close();
    removeDir(dir);
  }
});

test('no grant is answered before the state file holds it; a periodic check notices a file that cannot be written; a failed write refuses the grant (503 WITNESS_STATE) and the next one writes again', async () => {
  const dir = tempDir();
  const stateDir = path.join(dir, 'w');
  const f = path.join(stateDir, 'state.json');
  const w = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger: createLogger('silent'), quietMs: 0, stateFile: f, stateCheckMs: 100 });
  const at = `127.0.0.1:${w.address.port}`;
  try {
    assert.equal(w.stateWritable(), true);
    const fresh = JSON.parse(readFileSync(f, 'utf8')) as { incarnation: string; holder: unknown };
    assert.equal(fresh.incarnation, w.book.incarnation, 'the incarnation is on disk before any grant');
    assert.equal(fresh.holder, null);
    assert.equal(statSync(f).mode & 0o777, 0o600);
    const a = await requestLease(at, 'site-a', 'primary', 2000);
    assert.equal(a?.granted, true);
    assert.deepEqual((JSON.parse(readFileSync(f, 'utf8')) as { holder: { siteId: string; epoch: string } }).holder.epoch, a!.epoch);
    // The directory is replaced by a file: the next change of holder cannot be written.
    renameSync(stateDir, `${stateDir}.away`);
    writeFileSync(stateDir, 'not a directory');
    // The periodic check finds out before any change of holder is asked for.
    await until('the witness to notice its state cannot be written', () => w.stateWritable() === false, 3000, 20);
    assert.equal(((await (await fetch(`http://${at}/status`)).json()) as { stateWritable: boolean }).stateWritable, false);
    await sleep(1100);
    const problems: string[] = [];
    assert.equal(await requestLease(at, 'site-b', 'replica', 2000, undefined, (p) => problems.push(p)), undefined, 'a grant answered though it was not written');
    assert.match(problems.join('\n'), /could not write its state file/);
    assert.equal(w.stats().refused.state, 1);
    assert.equal(w.stats().grants, 1);
    // Back in place: B's next request gets the lease, and the file names it.
    removeDir(stateDir);
    renameSync(`${stateDir}.away`, stateDir);
    await until('the state to be writable again', () => w.stateWritable() === true, 3000, 20);
    const b = await requestLease(at, 'site-b', 'replica', 2000);
    assert.equal(b?.granted, true);
    assert.equal((JSON.parse(readFileSync(f, 'utf8')) as { holder: { siteId: string } }).holder.siteId, 'site-b');
  } finally {
    await w.close();
    removeDir(dir);
  }
});

test('a keyed witness refuses, after a restart, a request signed before it started (a replay its lost memory would have taken)', async () => {
  const key = Buffer.from('a-witness-key-of-at-least-32-characters');
  const dir = tempDir();
  const f = path.join(dir, 'state.json');
  const logger = createLogger('silent');
  let w = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger, key, quietMs: 0, stateFile: f });
  const post = (port: number, body: string) => fetch(`http://127.0.0.1:${port}/lease`, { method: 'POST', headers: { 'content-type': 'application/json', [MAC_HEADER]: witnessMac(key, 'request', body) }, body });
  try {
    // site-b's claim, answered before the restart and captured on the way.
    const claim = JSON.stringify({ siteId: 'site-b', role: 'replica', timeMs: Date.now() });
    assert.equal((await post(w.address.port, claim)).status, 200);
    await w.close();
    await sleep(5);
    w = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger, key, quietMs: 0, stateFile: f });
    const replayed = await post(w.address.port, claim);
    assert.equal(replayed.status, 401);
    const answer = (await replayed.json()) as { code: string; error: string };
    assert.equal(answer.code, 'WITNESS_REPLAY');
    assert.match(answer.error, /signed \d+ ms before the witness started/);
    assert.equal(w.stats().refused.replay, 1);
    // A request signed now counts.
    assert.equal((await requestLease(`127.0.0.1:${w.address.port}`, 'site-b', 'replica', 2000, key))?.granted, true);
  } finally {
    await w.close();
    removeDir(dir);
  }
});

test('a primary taken over stays fenced across a restart of the witness kept with --state', { timeout: 90_000 }, async () => {
  process.env.OFFSITE_WITNESS_LEASE_MS = '1000';
  const dir = tempDir();
  const port = await freePort();
  const at = `127.0.0.1:${port}`;
  const stateFile = path.join(dir, 'witness', 'state.json');
  mkdirSync(path.dirname(stateFile));
  const dataDir = path.join(dir, 'a');
  type W = { witness: { fenced: boolean; takenOver: boolean; reason: string } };
  let witness = await startWitnessProcess(port, ['--lease', '1s', '--state', stateFile]);
  let a = await startAppliance({ dataDir, volumes: ['v:1M'], args: ['--witness', at] });
  try {
    await until('the primary to hold the lease', async () => !((await a.status()) as W).witness.fenced, 15_000, 100);
    assert.equal((JSON.parse(readFileSync(stateFile, 'utf8')) as { holder: { siteId: string } }).holder.siteId !== 'site-b', true);
    await a.stop();
    // A's lease runs out; the replica (site-b) takes over, then the witness host loses power.
    await until('the lease to pass to site-b', async () => (await requestLease(at, 'site-b', 'replica', 1000))?.granted === true, 10_000, 100);
    assert.equal((JSON.parse(readFileSync(stateFile, 'utf8')) as { holder: { siteId: string } }).holder.siteId, 'site-b');
    await witness.stop('SIGKILL');
    witness = await startWitnessProcess(port, ['--lease', '1s', '--state', stateFile]);
    assert.ok(witness.logs.some((l) => l.msg === 'witness: state restored (the lease holders before this start are remembered)' && l.holder === 'site-b'));
    const status = (await (await fetch(`http://${at}/status`)).json()) as { incarnation: string; stateFile: string; holder: { siteId: string } };
    assert.equal(status.stateFile, stateFile);
    assert.equal(status.holder.siteId, 'site-b', 'the restarted witness names the holder it remembers');
    assert.equal(status.incarnation, (JSON.parse(readFileSync(stateFile, 'utf8')) as { incarnation: string }).incarnation);
    // The old primary comes back while site-b is still slow to renew: it must not get the lease.
    a = await startAppliance({ dataDir, volumes: ['v:1M'], args: ['--witness', at] });
    await until('the primary to hear from the witness', async () => ((await a.status()) as W).witness.takenOver, 15_000, 100);
    const st = (await a.status()) as W;
    assert.equal(st.witness.fenced, true);
    assert.match(st.witness.reason, /taken over by site-b/);
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 8 0 4k', a.url('v')]);
    assert.notEqual(r.code, 0, 'the old primary accepted a write after the lease passed to another site');
    assert.ok(witness.logs.some((l) => /superseded/.test(String(l.msg))));
    // site-b, renewing under the epoch it was given before the restart, keeps it.
    const b = await requestLease(at, 'site-b', 'primary', 1000, undefined, undefined, 1000, (JSON.parse(readFileSync(stateFile, 'utf8')) as { holder: { epoch: string } }).holder.epoch);
    assert.equal(b?.granted, true);
  } finally {
    await a.stop();
    await witness.stop();
    delete process.env.OFFSITE_WITNESS_LEASE_MS;
    removeDir(dir);
  }
});
