/**
 * Pausing replication (`offsite pause` / `offsite resume`, POST /pause and /resume): what an
 * operator of a replication appliance expects for a WAN maintenance window. Shipping stops with
 * the link up, writes go on and are journaled (not slowed by the throttle policy), the replica
 * stays at its consistent point and says why, the pause outlives a restart, and a resume ships
 * the backlog until both sites are equal again. A pause during an image sync holds the sync.
 * Real appliances, qemu-io writing and reading through iSCSI.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, startAppliance, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, freePort, metricValue, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

type Pause = { pausedAt: string; reason: string } | null;
type Rpo = { targetMissed: boolean; throttleDelayMs: number; coalescing: boolean };
const admin = (a: RunningAppliance, cmd: string, ...args: string[]) => run(process.execPath, [CLI, cmd, '--http', `127.0.0.1:${a.httpPort}`, ...args], { timeoutMs: 60_000 });
const replication = async (a: RunningAppliance) => (await a.status()).replication as { paused: Pause; rpo: Rpo; sync: { running: boolean; remainingBytes: number } };
const replicaLink = async (b: RunningAppliance) => (await b.status()).link as { connected: boolean; primaryPaused: boolean };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('pause: shipping stops with the link up, writes are journaled and not throttled, the pause outlives a restart; resume ships the backlog and the sites are equal', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const aDir = path.join(dir, 'a');
  const args = ['--rpo-target', '1s', '--rpo-policy', 'throttle'];
  const replica = await startReplica(path.join(dir, 'b'), replPort);
  let primary = await startPrimary(aDir, ['vol:16M'], replPort, args);
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    const { headSeq: before } = await waitCaughtUp(primary, replica);

    r = await admin(primary, 'pause', '--reason', 'WAN maintenance');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^replication paused since \S+ \(WAN maintenance\): writes are journaled, nothing is shipped/);
    const paused = (await replication(primary)).paused;
    assert.ok(paused && paused.reason === 'WAN maintenance' && Number.isFinite(Date.parse(paused.pausedAt)), JSON.stringify(paused));
    assert.ok(existsSync(path.join(aDir, 'state', 'pause.json')));
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('replication PAUSED by the operator')));
    // The replica hears of it at once (the next ping), the link stays up.
    await until('the replica to hear that its primary paused', async () => (await replicaLink(replica)).primaryPaused, 10_000, 100);
    assert.ok(replica.logs.some((l) => String(l.msg).startsWith('the primary paused shipping')));

    // Writes go on at the primary and are journaled; none reaches the replica.
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 1M', '-c', 'write -P 0x33 4M 2M', primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    // Past the 1 s target: the RPO is reported missed, but the throttle policy does not slow writers for a pause.
    await until('the RPO target to be reported missed', async () => (await replication(primary)).rpo.targetMissed, 20_000, 100);
    await sleep(1500);
    const st = await primary.status();
    const rpo = (st.replication as { rpo: Rpo }).rpo;
    assert.equal(rpo.throttleDelayMs, 0, 'writers are not throttled while paused');
    assert.equal(rpo.coalescing, false);
    assert.equal((st.link as { connected: boolean }).connected, true);
    assert.equal(st.ackedSeq, before);
    assert.ok((st.headSeq as number) > before && (st.backlogBytes as number) >= 3 << 20, JSON.stringify({ head: st.headSeq, backlog: st.backlogBytes }));
    const rs = await replica.status();
    assert.equal(rs.appliedSeq, before);
    assert.equal(rs.state, 'consistent');
    assert.deepEqual(await replicaLink(replica).then((l) => [l.connected, l.primaryPaused]), [true, true]);
    r = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x11 0 1M', '-c', 'read -P 0 4M 2M', replica.url('vol')]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    assert.equal(metricValue(await metrics(primary), 'offsite_replication_paused'), 1);
    assert.equal(metricValue(await metrics(primary), 'offsite_rpo_throttle_delay_seconds'), 0);
    assert.equal(metricValue(await metrics(replica), 'offsite_replication_paused'), 1);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(r.stdout, /shipping: +PAUSED since \S+ \(WAN maintenance\)/);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${replica.httpPort}`]);
    assert.match(r.stdout, /primary: +connected \S+ \(it has PAUSED shipping/);

    // Online verify is refused while the replica cannot move; a second pause changes nothing.
    r = await admin(primary, 'verify');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /REPLICATION_PAUSED/);
    r = await admin(primary, 'pause');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^replication was already paused since /);
    assert.deepEqual((await replication(primary)).paused, paused);

    // A restart keeps the pause (and its reason and time); the link comes back, still paused.
    await primary.stop();
    primary = await startPrimary(aDir, [], replPort, args);
    assert.deepEqual((await replication(primary)).paused, paused);
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('replication is PAUSED')));
    await until('the link to be back, paused', async () => ((await primary.status()).link as { connected: boolean }).connected && (await replicaLink(replica)).primaryPaused, 30_000, 100);
    await sleep(1000);
    assert.equal((await replica.status()).appliedSeq, before);

    // Resume: the backlog is shipped, the replica equals the primary, online verify agrees.
    r = await admin(primary, 'resume');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^replication resumed: shipping the backlog; backlog /);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'vol', dir);
    assert.equal((await replication(primary)).paused, null);
    assert.ok(!existsSync(path.join(aDir, 'state', 'pause.json')));
    assert.equal(metricValue(await metrics(primary), 'offsite_replication_paused'), 0);
    await until('the replica to hear of the resume', async () => !(await replicaLink(replica)).primaryPaused, 10_000, 100);
    assert.equal(metricValue(await metrics(replica), 'offsite_replication_paused'), 0);
    r = await admin(primary, 'verify', '--wait');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    r = await admin(primary, 'resume');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^replication was not paused; nothing waiting/);

    // The API: a reason must be text; the admin token is needed; a replica has nothing to pause.
    let res = await fetch(`http://127.0.0.1:${primary.httpPort}/pause`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 7 }) });
    assert.equal(res.status, 400);
    res = await fetch(`http://127.0.0.1:${primary.httpPort}/pause`, { method: 'POST' });
    assert.equal(res.status, 401);
    assert.equal((await replication(primary)).paused, null, 'refused calls changed nothing');
    r = await admin(replica, 'pause');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /NOT_REPLICATING/);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('pause during an image sync holds the sync where it is; resume finishes it', { timeout: 180_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const replPort = await freePort();
  let primary: RunningAppliance | undefined;
  let replica: RunningAppliance | undefined;
  try {
    // A primary that ran alone for a while (its journal trimmed): a new replica needs an image
    // sync. Data that does not compress, over a capped link, so the sync lasts a few seconds.
    const alone = await startAppliance({ dataDir: aDir, volumes: ['vol:32M'] });
    const img = path.join(dir, 'random.img');
    writeFileSync(img, randomBytes(24 << 20));
    let r = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, alone.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await alone.stop(), 0);
    replica = await startReplica(path.join(dir, 'b'), replPort);
    const b = replica;
    const p = (primary = await startPrimary(aDir, [], replPort, ['--max-bandwidth', '4MB/s']));
    const sync = async () => (await replication(p)).sync;
    await until('a sync to be under way', async () => {
      const s = await sync();
      return s.running && s.remainingBytes < 30 << 20;
    }, 60_000, 50);
    r = await admin(p, 'pause');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await until('the sync to hold', async () => p.logs.some((l) => l.msg === 'sync paused'), 10_000, 50);
    const held = (await sync()).remainingBytes;
    await sleep(2000);
    const s = await sync();
    assert.equal(s.running, true);
    assert.equal(s.remainingBytes, held, 'no sync chunk is sent while paused');
    assert.equal((await b.status()).state, 'syncing');
    assert.equal(((await p.status()).link as { connected: boolean }).connected, true);
    r = await admin(p, 'resume');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await waitCaughtUp(p, b, 120_000);
    assert.ok(p.logs.some((l) => l.msg === 'sync resumed'));
    await assertSameVolume(p, b, 'vol', dir);
  } finally {
    await primary?.stop();
    await replica?.stop();
    removeDir(dir);
  }
});
