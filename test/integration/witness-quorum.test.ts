/**
 * Two sites and three real witnesses (`--witness A,B,C`). One witness down: the primary keeps its
 * lease and accepts writes, and says that only two of three answer (status, metric). The
 * primary lost: the replica takes over with the two witnesses left, and the new primary holds the
 * lease.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';
import { startWitnessProcess, type RunningWitness } from '../helpers/witness';

const LEASE_MS = 2000;

type W = { witness: { fenced: boolean; reachable: boolean; quorum: number; witnesses: { address: string; vote: string }[] } };

test('a quorum of three witnesses: one down changes nothing but the report; the primary lost, the replica takes over with the other two', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const env = { OFFSITE_WITNESS_LEASE_MS: String(LEASE_MS) };
  process.env.OFFSITE_WITNESS_LEASE_MS = env.OFFSITE_WITNESS_LEASE_MS;
  const key = path.join(dir, 'witness.key');
  const kg = await run(process.execPath, [CLI, 'keygen', '--witness-key', key]);
  assert.equal(kg.code, 0, kg.stderr);
  const witnesses: RunningWitness[] = [];
  const replPort = await freePort();
  let a, b;
  try {
    for (let i = 0; i < 3; i++) witnesses.push(await startWitnessProcess(await freePort(), ['--key-file', key], env));
    const list = witnesses.map((w) => `127.0.0.1:${w.port}`).join(',');
    b = await startReplica(path.join(dir, 'b'), replPort, ['--witness', list, '--witness-key', key, '--failover-after', '2s']);
    a = await startPrimary(path.join(dir, 'a'), ['q:8M'], replPort, ['--witness', list, '--witness-key', key]);
    const pa = a;
    await waitCaughtUp(a, b);
    await until('the primary to hold the lease at all three witnesses', async () => ((await pa.status()) as W).witness.witnesses.every((v) => v.vote === 'granted'), 20_000, 100);
    assert.equal(((await a.status()) as W).witness.quorum, 2);
    // The replica asks nobody while it hears its primary.
    const rb = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.match(rb.stdout, new RegExp(`^witness: +${list} asked when the primary falls silent, authenticated; standing by$`, 'm'));

    // One witness down: still the primary, still writing; the report names the missing one.
    await witnesses[1].stop('SIGKILL');
    await until('the primary to notice the missing witness', async () => ((await pa.status()) as W).witness.witnesses[1].vote === 'none', 10_000, 100);
    await new Promise((r) => setTimeout(r, LEASE_MS));
    const st = (await a.status()) as W;
    assert.equal(st.witness.fenced, false);
    assert.equal(st.witness.reachable, true);
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x51 0 64k', a.url('q')]);
    assert.equal(r.code, 0, r.stderr);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${a.httpPort}`]);
    assert.match(r.stdout, new RegExp(`^witness: +${list} reachable: 2 of 3 granted, 2 needed \\(127\\.0\\.0\\.1:${witnesses[1].port} NO ANSWER\\), authenticated; writes accepted$`, 'm'));
    const m = await metrics(a);
    assert.match(m, /^offsite_witnesses 3$/m);
    assert.match(m, /^offsite_witnesses_answering 2$/m);
    assert.ok(a.logs.some((l) => String(l.msg).startsWith(`witness 127.0.0.1:${witnesses[1].port} unreachable`)), 'the missing witness is logged');
    await waitCaughtUp(a, b);

    // The primary is lost: the replica takes over with two witnesses of three.
    await a.kill('SIGKILL');
    const pb = b;
    await until('the replica to take over', async () => (await pb.status().catch(() => ({ role: '' }))).role === 'primary', 40_000, 200);
    assert.ok(b.logs.some((l) => l.msg === 'primary silent and the witness agrees: taking over' && l.granted === 2));
    await until('the new primary to hold the lease', async () => !((await pb.status()) as W).witness.fenced, 20_000, 100);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x51 0 64k', '-c', 'write -P 0x52 64k 64k', b.url('q')]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    assert.ok(witnesses[0].logs.some((l) => l.msg === 'witness: lease taken over (the previous holder stopped renewing)'));
  } finally {
    await a?.stop();
    await b?.stop();
    await Promise.all(witnesses.map((w) => w.stop()));
    delete process.env.OFFSITE_WITNESS_LEASE_MS;
    removeDir(dir);
  }
});
