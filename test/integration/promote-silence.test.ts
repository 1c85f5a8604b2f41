/**
 * src/appliance/appliance.ts (awaitPrimarySilence, takeLeaseForPromotion): an operator's promote
 * (without --force) goes ahead only once the primary has been silent for a while, not merely
 * disconnected at that instant. A primary that comes back while the promote waits gets the
 * promote refused; one that stays away gets the promotion. With a witness the promote also takes
 * the lease first, and is refused while the primary still renews it.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { startWitness } from '../../src/appliance/witness';
import { createLogger } from '../../src/ops/logging';
import { FaultProxy } from '../helpers/fault-proxy';
import { freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

test('a promote right after the primary went away waits for its silence: refused when the primary comes back, done when it does not', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const b = await startReplica(path.join(dir, 'b'), replPort, [], { OFFSITE_PROMOTE_QUIET_MS: '5000' });
  let a = await startPrimary(path.join(dir, 'a'), ['v:8M'], replPort);
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 5 0 64k', a.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(a, b);
    await a.stop();
    // The link is down this instant, but the primary was heard just now: the promote waits, and the primary returns.
    const promoting = run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    a = await startPrimary(path.join(dir, 'a'), ['v:8M'], replPort);
    const refused = await promoting;
    assert.equal(refused.code, 1, refused.stdout);
    assert.match(refused.stderr, /is connected to this replica right now.*\[PRIMARY_CONNECTED\]/);
    assert.equal((await b.status()).role, 'replica');
    assert.ok(b.logs.some((l) => l.msg === 'promote: waiting until the primary has been silent long enough'));
    await waitCaughtUp(a, b);

    await a.stop();
    const p = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.equal(p.code, 0, p.stderr);
    assert.equal((await b.status()).role, 'primary');
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 6 0 4k', b.url('v')]);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    await a.stop();
    await b.stop();
    removeDir(dir);
  }
});

test('with a witness, an operator\'s promote takes the lease first: refused while the primary (cut off from the replica only) still renews it, done once it stops', { timeout: 120_000 }, async () => {
  process.env.OFFSITE_WITNESS_LEASE_MS = '1000';
  const dir = tempDir();
  const witness = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger: createLogger('silent'), quietMs: 0 });
  const w = ['--witness', `127.0.0.1:${witness.address.port}`];
  const replPort = await freePort();
  const proxy = new FaultProxy('127.0.0.1', replPort, 5);
  const proxyPort = await proxy.listen();
  const b = await startReplica(path.join(dir, 'b'), replPort, w);
  const a = await startPrimary(path.join(dir, 'a'), ['v:8M'], proxyPort, w);
  try {
    await until('the primary to hold the lease', async () => !((await a.status()).witness as { fenced: boolean }).fenced, 15_000, 100);
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 5 0 64k', a.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(a, b);
    // The link between the sites goes; the primary still reaches the witness and writes on.
    proxy.refuse(true);
    proxy.cut();
    const refused = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.equal(refused.code, 1, refused.stdout);
    assert.match(refused.stderr, /the witness lease is held by [0-9a-f-]+, renewed for longer than a lease .*the primary is alive.*\[PRIMARY_HOLDS_LEASE\]/);
    assert.equal((await b.status()).role, 'replica');
    const still = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 6 0 4k', a.url('v')]);
    assert.equal(still.code, 0, 'the primary keeps its lease and its writes');
    // The primary stops: its lease runs out, and the promote gets it.
    await a.stop();
    const p = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.equal(p.code, 0, p.stderr);
    await until('the promoted site to hold the lease', async () => (await b.status()).role === 'primary' && !((await b.status()).witness as { fenced: boolean }).fenced, 15_000, 100);
  } finally {
    await a.stop();
    await b.stop();
    await proxy.close();
    await witness.close();
    delete process.env.OFFSITE_WITNESS_LEASE_MS;
    removeDir(dir);
  }
});
