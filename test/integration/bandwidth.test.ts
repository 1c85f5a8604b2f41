/**
 * A bandwidth cap changed at run time outlives a restart (issue 4's POST /bandwidth, as an
 * operator expects of an appliance setting), until the configured cap changes or --reset; and
 * the same for the RPO target and policy (offsite rpo, POST /rpo).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startPrimary, startReplica } from '../helpers/replication';
import { until } from '../helpers/wait';

type Link = { maxBandwidthBytesPerSec: number; maxBandwidthSource: string; configuredMaxBandwidthBytesPerSec: number };
const link = async (a: RunningAppliance): Promise<Link> => (await a.status()).link as Link;
const cli = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'bandwidth', '--http', `127.0.0.1:${a.httpPort}`, ...args]);

test('bandwidth: a run-time change is saved and kept across restarts; a changed configuration or --reset returns to the configured cap', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const data = path.join(dir, 'a');
  // No replica needs to listen: the cap belongs to the primary's shipper.
  const replPort = await freePort();
  let primary = await startPrimary(data, ['bw:4M'], replPort, ['--max-bandwidth', '2MB/s']);
  try {
    const { maxBandwidthBytesPerSec, maxBandwidthSource, configuredMaxBandwidthBytesPerSec } = await link(primary);
    assert.deepEqual({ maxBandwidthBytesPerSec, maxBandwidthSource, configuredMaxBandwidthBytesPerSec }, { maxBandwidthBytesPerSec: 2_000_000, maxBandwidthSource: 'configured', configuredMaxBandwidthBytesPerSec: 2_000_000 });
    let r = await cli(primary, '5MB/s');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /cap: 5000000 bytes\/s \(saved: kept across restarts/);
    assert.equal((await link(primary)).maxBandwidthSource, 'runtime');
    assert.ok(existsSync(path.join(data, 'state', 'bandwidth.json')));
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(r.stdout, /cap 4\.8 MiB\/s \(set at run time; configured 1\.9 MiB\/s\)/);
    assert.match(r.stdout, /^rpo: .*\(no target set, policy coalesce\)/m, 'no --rpo-target: the status says so rather than "target 0 s"');

    // Same configuration after a restart: the change holds, and the log says so.
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '2MB/s']);
    let l = await link(primary);
    assert.equal(l.maxBandwidthBytesPerSec, 5_000_000);
    assert.equal(l.maxBandwidthSource, 'runtime');
    assert.ok(primary.logs.some((x) => String(x.msg).startsWith('replication bandwidth cap: keeping the change made at run time')));

    // --reset: back to the configured cap, now and after a restart.
    r = await cli(primary, '--reset');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /cap: 2000000 bytes\/s \(the configured cap\)/);
    assert.equal((await link(primary)).maxBandwidthSource, 'configured');
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '2MB/s']);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 2_000_000);

    // The operator changes the configured cap after a run-time change: the configuration wins.
    r = await cli(primary, 'unlimited');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 0);
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '3MB/s']);
    l = await link(primary);
    assert.equal(l.maxBandwidthBytesPerSec, 3_000_000);
    assert.equal(l.maxBandwidthSource, 'configured');
    assert.ok(primary.logs.some((x) => String(x.msg).startsWith('replication bandwidth cap: the configured cap changed since the run-time change')));
    assert.ok(!existsSync(path.join(data, 'state', 'bandwidth.json')), 'the overtaken change is dropped');

    // A damaged settings file is reported and ignored, never fatal.
    await primary.stop();
    writeFileSync(path.join(data, 'state', 'bandwidth.json'), '{"bytesPerSec": "lots"');
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '3MB/s']);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 3_000_000);
    assert.ok(primary.logs.some((x) => String(x.msg).startsWith('replication bandwidth cap: the saved run-time change is unreadable')));

    // Usage errors: a rate and --reset, or neither; the API says the same.
    r = await cli(primary, '1MB/s', '--reset');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /a rate .* or --reset, not both/);
    r = await cli(primary);
    assert.equal(r.code, 2);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bandwidth`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ rate: '1MB/s', reset: true }) });
    assert.equal(res.status, 400);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 3_000_000, 'a refused call changed nothing');
  } finally {
    await primary.stop();
    removeDir(dir);
  }
});

type Rpo = { targetSeconds: number; policy: string; source: string; configuredTargetSeconds: number; configuredPolicy: string; throttleDelayMs: number; targetMissed: boolean };
const rpo = async (a: RunningAppliance): Promise<Rpo> => ((await a.status()).replication as { rpo: Rpo }).rpo;
const rpoCli = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'rpo', '--http', `127.0.0.1:${a.httpPort}`, ...args]);

test('rpo: the target and policy changed at run time take effect at once and are kept across restarts; a changed configuration or --reset returns to the configured ones', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const data = path.join(dir, 'a');
  // No replica listens at first: every write stays in the backlog, so the RPO grows past any target.
  const replPort = await freePort();
  const configured = ['--rpo-target', '10s', '--rpo-policy', 'throttle', '--max-bandwidth', '128KB/s'];
  let primary = await startPrimary(data, ['rpo:4M'], replPort, configured);
  let replica: RunningAppliance | undefined;
  try {
    let x = await rpo(primary);
    assert.deepEqual([x.targetSeconds, x.policy, x.source], [10, 'throttle', 'configured']);
    // Alert only, with a 1 s target: the target is missed, writers are not slowed.
    let r = await rpoCli(primary, '--target', '1s', '--policy', 'alert');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^RPO target 1 s, policy alert \(saved: kept across restarts until the configured ones change, configured 10 s throttle/);
    assert.ok(existsSync(path.join(data, 'state', 'rpo.json')));
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 1M', primary.url('rpo')]);
    assert.equal(r.code, 0, r.stderr);
    await until('the 1 s target to be missed', async () => (await rpo(primary)).targetMissed, 20_000, 100);
    await new Promise((res) => setTimeout(res, 1000));
    assert.equal((await rpo(primary)).throttleDelayMs, 0, 'policy alert slows no writer');
    // Only the policy: the target stays; now the throttle works on the missed target.
    r = await rpoCli(primary, '--policy', 'throttle');
    assert.equal(r.code, 0, r.stderr);
    x = await rpo(primary);
    assert.deepEqual([x.targetSeconds, x.policy, x.source], [1, 'throttle', 'runtime']);
    // The link is down: slower writers would not bring the replica any closer, so none are slowed.
    await new Promise((res) => setTimeout(res, 1500));
    x = await rpo(primary);
    assert.equal(x.throttleDelayMs, 0, 'writers slowed while no replica is there to drain the backlog');
    assert.equal(x.targetMissed, true);
    // A replica behind a slow link (128 KB/s for a 3 MiB backlog): now the throttle works on the missed target.
    replica = await startReplica(path.join(dir, 'b'), replPort);
    await until('the replica to be replicating (its first sync done)', async () => (await primary.status()).consistency === 'replicating', 30_000, 100);
    // Incompressible (the link, not lz4, decides), in 48 writes of 64 KiB: the first segment goes
    // at once, the next wait their turn at the cap.
    const pieces: string[] = [];
    for (let k = 0; k < 48; k++) {
      const noise = path.join(dir, `noise-${k}.bin`);
      writeFileSync(noise, randomBytes(65536));
      pieces.push('-c', `write -s ${noise} ${(1 << 20) + k * 65536} 64k`);
    }
    r = await run('qemu-io', ['-f', 'raw', ...pieces, primary.url('rpo')]);
    assert.equal(r.code, 0, r.stderr);
    await until('the throttle to slow writers', async () => (await rpo(primary)).throttleDelayMs > 0, 20_000, 100);
    await until('the 1 s target to be missed over the slow link', async () => (await rpo(primary)).targetMissed, 20_000, 100);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(r.stdout, /rpo: .*\(target 1 s, policy throttle; set at run time, configured 10 s throttle, MISSED\)/);

    // Same configuration after a restart: kept, and logged.
    await primary.stop();
    primary = await startPrimary(data, [], replPort, configured);
    x = await rpo(primary);
    assert.deepEqual([x.targetSeconds, x.policy, x.source], [1, 'throttle', 'runtime']);
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('RPO target and policy: keeping the change made at run time')));
    // --reset: the configured ones, now and after a restart.
    r = await rpoCli(primary, '--reset');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^RPO target 10 s, policy throttle \(the configured ones\)/);
    assert.ok(!existsSync(path.join(data, 'state', 'rpo.json')));
    // A change, then a new configuration: the configuration wins.
    r = await rpoCli(primary, '--target', '0');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await rpo(primary)).targetSeconds, 0);
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--rpo-target', '20s', '--rpo-policy', 'throttle']);
    x = await rpo(primary);
    assert.deepEqual([x.targetSeconds, x.policy, x.source], [20, 'throttle', 'configured']);
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('RPO target and policy: the configuration changed since the run-time change')));

    // Usage errors, here and in the API; refused calls change nothing.
    r = await rpoCli(primary, '--policy', 'alert', '--reset');
    assert.equal(r.code, 2);
    r = await rpoCli(primary, '--policy', 'sometimes');
    assert.equal(r.code, 2);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/rpo`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ policy: 'never' }) });
    assert.equal(res.status, 400);
    assert.equal((await rpo(primary)).policy, 'throttle');
  } finally {
    await primary.stop();
    await replica?.stop();
    removeDir(dir);
  }
});
