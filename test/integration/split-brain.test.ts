/**
 * Issue 5 acceptance 3: split brain. The link between the sites is cut and the witness is
 * reachable by exactly one side — first the primary (it keeps writing; the replica may not take
 * over), then only the replica (the primary fences itself; the replica takes over once the
 * lease has expired). Sampled all along: never do both sides accept a write; and from the logs,
 * the primary fenced itself before the replica took over.
 * The same with a silent network instead of closed connections: the link and the primary's way
 * to the witness stop carrying anything while their connections stay open (no reset, no FIN),
 * as when a site's uplink fails; the primary must not take its open link for a live replica.
 * And a primary whose process is paused (SIGSTOP, as a suspended VM) past its lease while the
 * replica takes over: the first write it gets after waking is refused.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, TARGET_PREFIX, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { FaultProxy, rng } from '../helpers/fault-proxy';
import { pattern, RawInitiator } from '../helpers/raw-initiator';
import { freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';
import { startWitnessProcess } from '../helpers/witness';

const LEASE_MS = 3000;

async function acceptsWrite(app: RunningAppliance): Promise<boolean> {
  const r = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x3c ${1024 * 1024} 4k`, app.url('sb')], { timeoutMs: 5_000 });
  return r.code === 0 && !/error|failed/i.test(r.stdout + r.stderr);
}

/** When `msg` was first logged at or after `since` (ms since the epoch). */
function logTime(app: RunningAppliance, msg: string, since = 0): number | undefined {
  const rec = app.logs.find((l) => l.msg === msg && Number(l.time) >= since);
  return rec ? Number(rec.time) : undefined;
}

/** The witness and both sites, through proxies (the link; each site's way to the witness), and a sampler. */
async function deploy(dir: string) {
  const witnessPort = await freePort();
  // Deployed as the README says: the witness and both sites share a key.
  const witnessKey = path.join(dir, 'witness.key');
  const kg = await run(process.execPath, [CLI, 'keygen', '--witness-key', witnessKey]);
  assert.equal(kg.code, 0, kg.stderr);
  const witness = await startWitnessProcess(witnessPort, ['--key-file', witnessKey]);
  const replPort = await freePort();
  const link = new FaultProxy('127.0.0.1', replPort, 1);
  const aw = new FaultProxy('127.0.0.1', witnessPort, 2);
  const bw = new FaultProxy('127.0.0.1', witnessPort, 3);
  const linkPort = await link.listen();
  const awPort = await aw.listen();
  const bwPort = await bw.listen();
  const b = await startReplica(path.join(dir, 'b'), replPort, ['--witness', `127.0.0.1:${bwPort}`, '--witness-key', witnessKey, '--failover-after', '2s']);
  // Both sites may take over whenever they are the replica (after a failback, the old primary).
  const a = await startPrimary(path.join(dir, 'a'), ['sb:8M'], linkPort, ['--witness', `127.0.0.1:${awPort}`, '--witness-key', witnessKey, '--failover-after', '2s']);
  const samples: { a: boolean; b: boolean; phase: number }[] = [];
  const sample = async (phase: number, ms: number) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const [sa, sb] = await Promise.all([acceptsWrite(a), acceptsWrite(b)]);
      samples.push({ a: sa, b: sb, phase });
      assert.ok(!(sa && sb), `both sites accepted a write (phase ${phase})`);
      await new Promise((r) => setTimeout(r, 150));
    }
  };
  return {
    a, b, link, aw, bw, witness, samples, sample,
    /** Both sites up and replicating, the primary holding its lease. */
    async ready() {
      for (let i = 0; i < 50 && !(await acceptsWrite(a)); i++) await new Promise((r) => setTimeout(r, 200));
      await waitCaughtUp(a, b);
      // The witness grants nothing during its first lease (a holder from before a restart may
      // still be alive): the primary holds the lease only once that has passed. Until then it is
      // writable only while its replica answered a ping less than half a lease ago, and a late
      // ping on a loaded machine fences it for a moment (seen once in CI): ready means the lease
      // is held and the primary unfenced, whenever that is reached.
      await until('the primary to hold the witness lease and accept writes', async () => {
        const w = (await a.status()).witness as { reachable: boolean; fenced: boolean };
        return w.reachable && !w.fenced;
      }, 20_000, 100);
    },
    /** Sample until the replica has taken over: then only it accepts writes, and the old primary fenced itself first. */
    async takeover(phase: number) {
      const phaseStart = Date.now();
      const deadline = phaseStart + 30_000;
      let promoted = false;
      while (Date.now() < deadline && !promoted) {
        await sample(phase, 500);
        promoted = (await b.status().catch(() => ({ role: '' }))).role === 'primary';
      }
      assert.ok(promoted, 'the replica took over');
      await sample(phase, 1500);
      const last = samples[samples.length - 1];
      assert.ok(!last.a && last.b, `after the takeover only the new primary accepts writes: ${JSON.stringify(last)}`);
      // The primary starts fenced (until its first lease): the fence that counts is this phase's.
      const fencedAt = logTime(a, 'fenced: this site refuses writes', phaseStart);
      const takeoverAt = logTime(b, 'primary silent and the witness agrees: taking over', phaseStart);
      assert.ok(fencedAt && takeoverAt, 'fence and takeover are logged in this phase');
      assert.ok(fencedAt < takeoverAt, `the old primary fenced itself (${fencedAt}) before the takeover (${takeoverAt})`);
      assert.ok(witness.logs.some((l) => l.msg === 'witness: lease taken over (the previous holder stopped renewing)'));
      return takeoverAt - fencedAt;
    },
    async close() {
      await a.stop();
      await b.stop();
      await witness.stop();
      await Promise.all([link.close(), aw.close(), bw.close()]);
    },
  };
}

type Deployment = Awaited<ReturnType<typeof deploy>>;

/** Deploy (with the short lease), wait until ready, run `body`, and take everything down again. */
async function withDeployment(body: (d: Deployment) => Promise<void>): Promise<void> {
  process.env.OFFSITE_WITNESS_LEASE_MS = String(LEASE_MS);
  const dir = tempDir();
  const d = await deploy(dir);
  try {
    await d.ready();
    await body(d);
  } finally {
    for (const s of [d.a, d.b]) s.proc.kill('SIGCONT');
    for (const p of [d.link, d.aw, d.bw]) p.stall(false);
    await d.close();
    delete process.env.OFFSITE_WITNESS_LEASE_MS;
    removeDir(dir);
  }
}

/** Fail back by hand: the old primary demoted, the new one replicating to it (at `target(listen)`). */
async function failBack(oldPrimary: RunningAppliance, newPrimary: RunningAppliance, target: (listen: number) => Promise<number> = async (l) => l): Promise<void> {
  const listen = await freePort();
  let r = await run(process.execPath, [CLI, 'demote', '--http', `127.0.0.1:${oldPrimary.httpPort}`, '--replication-listen', `127.0.0.1:${listen}`]);
  assert.equal(r.code, 0, r.stderr);
  r = await run(process.execPath, [CLI, 'replicate-to', '--http', `127.0.0.1:${newPrimary.httpPort}`, `127.0.0.1:${await target(listen)}`]);
  assert.equal(r.code, 0, r.stderr);
}

test('split brain: with the link cut and the witness reachable by one side, exactly one side accepts writes', { timeout: 180_000 }, async () => {
  await withDeployment(async (d) => {
    const { a, b, link, aw, bw, samples } = d;
    // Phase 1: link cut, witness reachable only by the primary: the primary goes on, no takeover.
    link.refuse(true);
    link.cut();
    bw.refuse(true);
    bw.cut();
    await d.sample(1, 2000 + LEASE_MS * 2);
    assert.ok(samples.filter((s) => s.phase === 1).every((s) => s.a && !s.b), `phase 1: ${JSON.stringify(samples)}`);
    assert.equal((await b.status()).role, 'replica');

    // Phase 2: witness reachable only by the replica: the primary fences itself, the replica takes over.
    bw.refuse(false);
    aw.refuse(true);
    aw.cut();
    const gap = await d.takeover(2);
    // Reconnected to the witness, the old primary learns it was taken over and stays fenced.
    aw.refuse(false);
    await new Promise((r) => setTimeout(r, LEASE_MS));
    assert.equal(await acceptsWrite(a), false);
    assert.equal(((await a.status()).witness as { takenOver: boolean }).takenOver, true);
    // Fail back by hand: the old primary becomes the new one's replica.
    await failBack(a, b);
    await waitCaughtUp(b, a, 60_000);
    process.stdout.write(`# split brain: ${samples.length} samples, phase 1 primary-only ${samples.filter((s) => s.phase === 1).length}, takeover ${gap} ms after the fence\n`);
  });
});

test('split brain on a silent network: the primary\'s link and witness connections stay open but carry nothing; it fences itself before the replica takes over', { timeout: 180_000 }, async () => {
  await withDeployment(async (d) => {
    const { a, link, aw } = d;
    link.stall(true);
    aw.stall(true);
    const gap = await d.takeover(1);
    assert.equal(((await a.status()).witness as { fenced: boolean }).fenced, true);
    process.stdout.write(`# split brain, silent network: ${d.samples.length} samples, takeover ${gap} ms after the fence\n`);
  });
});

test('a primary paused past its lease (SIGSTOP) while the replica takes over refuses the first write after it wakes', { timeout: 180_000 }, async () => {
  let s: RawInitiator | undefined;
  await withDeployment(async (d) => {
    const { a, b } = d;
    // A session logged in before the pause, so the write reaches the primary the moment it wakes.
    s = await RawInitiator.session(a.iscsiPort, { targetName: `${TARGET_PREFIX}:sb`, initiatorName: 'iqn.2026-11.dev.offsite.test:pause' });
    const before = await s.write10(4096, pattern(4096, 1));
    assert.equal(before.status, 0, 'the primary accepts writes before the pause');
    a.proc.kill('SIGSTOP');
    await until('the replica to take over', async () => (await b.status().catch(() => ({ role: '' }))).role === 'primary', 40_000, 200);
    const pending = s.write10(4104, pattern(4096, 2));
    await new Promise((r) => setTimeout(r, 200));
    a.proc.kill('SIGCONT');
    const after = await pending;
    assert.equal(after.status, 2, `the first write after waking is refused (status ${after.status})`);
    assert.equal((after.sense?.[2] ?? 0) & 0x0f, 0x7, 'with DATA PROTECT');
    assert.equal(await acceptsWrite(b), true, 'the new primary accepts writes');
    await until('the old primary to learn it was taken over', async () => ((await a.status()).witness as { takenOver: boolean }).takenOver, 20_000, 100);
    assert.equal(await acceptsWrite(a), false);
  }).finally(() => s?.destroy());
});

/**
 * Random rounds of the faults above, combined: the link cut or silent, either site's way to the
 * witness cut or silent, the primary paused; healed after a random time. Sampled all along, never
 * both sites accept a write. After each round the primary accepts writes again (a takeover is
 * failed back by hand, as an operator would: demote, replicate-to), and the pair catches up.
 * OFFSITE_SPLIT_BRAIN_ROUNDS (default 4) and OFFSITE_SPLIT_BRAIN_SEED replay a run.
 */
const ROUNDS = Number(process.env.OFFSITE_SPLIT_BRAIN_ROUNDS ?? 4);

test('split brain, random rounds: cuts, silences and pauses combined; never two writable sites, always one again after healing', { timeout: 120_000 + ROUNDS * 90_000 }, async (t) => {
  const seed = Number(process.env.OFFSITE_SPLIT_BRAIN_SEED ?? Date.now() % 1_000_000);
  const rand = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const proxies: FaultProxy[] = [];
  const log: string[] = [];
  await withDeployment(async (d) => {
    // Who is primary, and the proxies on its link and on each site's way to the witness.
    let primary = d.a;
    let replica = d.b;
    let link = d.link;
    const witnessPath = new Map([[d.a, d.aw], [d.b, d.bw]]);
    for (let round = 1; round <= ROUNDS; round++) {
      const fault = { link: pick(['none', 'cut', 'silent'] as const), primaryWitness: pick(['none', 'cut', 'silent'] as const), replicaWitness: pick(['none', 'none', 'cut', 'silent'] as const), pause: rand() < 0.25 };
      const ms = 2000 + Math.floor(rand() * 8000);
      log.push(`round ${round}: ${JSON.stringify(fault)} for ${ms} ms, primary ${primary === d.a ? 'a' : 'b'}`);
      const apply = (p: FaultProxy, f: 'none' | 'cut' | 'silent') => {
        if (f === 'cut') {
          p.refuse(true);
          p.cut();
        } else if (f === 'silent') p.stall(true);
      };
      apply(link, fault.link);
      apply(witnessPath.get(primary)!, fault.primaryWitness);
      apply(witnessPath.get(replica)!, fault.replicaWitness);
      if (fault.pause) primary.proc.kill('SIGSTOP');
      await d.sample(round, ms);
      if (fault.pause) primary.proc.kill('SIGCONT');
      for (const p of [link, d.aw, d.bw]) {
        p.refuse(false);
        p.stall(false);
      }
      await d.sample(round, 2 * LEASE_MS);
      if ((await replica.status()).role === 'primary') {
        // Taken over: the old primary knows it, and is failed back as the new replica.
        await until('the old primary to learn it was taken over', async () => ((await primary.status()).witness as { takenOver: boolean }).takenOver, 20_000, 100);
        await failBack(primary, replica, (listen) => {
          link = new FaultProxy('127.0.0.1', listen, seed + round);
          proxies.push(link);
          return link.listen();
        });
        [primary, replica] = [replica, primary];
        log.push(`  taken over: now primary ${primary === d.a ? 'a' : 'b'}`);
      }
      await waitCaughtUp(primary, replica, 60_000);
      const p = primary;
      await until(`round ${round}: the primary to accept writes again`, () => acceptsWrite(p), 30_000, 250);
      assert.equal(await acceptsWrite(replica), false, `round ${round}: the replica accepts writes`);
    }
    t.diagnostic(`split brain, random rounds (seed ${seed}): ${d.samples.length} samples, never both writable\n${log.join('\n')}`);
  })
    .catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\nseed ${seed}:\n${log.join('\n')}`, { cause: e });
    })
    .finally(() => Promise.all(proxies.map((p) => p.close())));
});
