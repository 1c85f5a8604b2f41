/**
 * Issues 3 and 4: the epoch delta. A primary with a small --journal-max whose replica is away
 * keeps taking writes: past the cap it folds records the replica never got (a metric and a log
 * line say so). When the replica returns it is behind the retained journal and gets a delta sync
 * of the changed blocks (compared by hash), staged whole: its volumes keep showing the old
 * consistent point until the sync and the journal tail through its consistent point are stored,
 * then move there in one step. A SIGKILL while staging resumes the sync and still exposes no mixed
 * state. Checked with a chain of dependent records (record k names record k-1) read through the
 * replica's iSCSI target the whole time.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import test from 'node:test';
import { checkChainImage } from '../faults/campaign';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, TARGET_PREFIX, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { RawInitiator } from '../helpers/raw-initiator';
import { assertSameVolume, chainBlock, freePort, metrics, metricValue, pollReplica, readVolume, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

const N = 1024; // chain blocks: 4 MiB of an 8 MiB volume
const VOLUME = 'dv';

const logged = (app: RunningAppliance, prefix: string) => app.logs.some((l) => String(l.msg).startsWith(prefix));

interface LeftBehind {
  dir: string;
  bDir: string;
  replPort: number;
  primary: RunningAppliance;
  writer: RawInitiator;
  /** Chain records up to `upTo` (record k names k-1; block ((k-1) mod N)+1). */
  write(upTo: number): Promise<void>;
  bandwidth(rate: string): Promise<void>;
}

/**
 * A primary with a 1 MiB journal cap and a replica that caught up on chain records 1..`held` and
 * then stopped, while the primary wrote on up to `upTo` and folded records the replica never got.
 * With `slow`, the link is capped at that rate and 256 KiB of incompressible data is written
 * outside the chain region, so the delta sync runs for seconds (the shaper's burst can't hide it).
 */
async function replicaLeftBehind(name: string, held: number, upTo: number, slow?: string): Promise<LeftBehind> {
  const dir = tempDir();
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  const replica = await startReplica(bDir, replPort);
  const primary = await startPrimary(path.join(dir, 'a'), [`${VOLUME}:8M`], replPort, ['--journal-max', '1M']);
  const writer = await RawInitiator.session(primary.iscsiPort, { initiatorName: `iqn.2026-11.dev.offsite.test:${name}`, targetName: `${TARGET_PREFIX}:${VOLUME}` });
  let k = 0;
  const setup: LeftBehind = {
    dir,
    bDir,
    replPort,
    primary,
    writer,
    write: async (to) => {
      while (k < to) {
        k++;
        assert.equal((await writer.write10((((k - 1) % N) + 1) * 8, chainBlock(k))).status, 0, `write of record ${k}`);
      }
    },
    bandwidth: async (rate) => {
      const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bandwidth`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ rate }) });
      assert.equal(res.status, 200);
    },
  };
  try {
    await setup.write(held);
    await waitCaughtUp(primary, replica);
    assert.deepEqual(checkChainImage(await readVolume(replica, VOLUME, path.join(dir, 'held.img')), N), { top: held });
    if (slow) await setup.bandwidth(slow);
    await replica.stop();
    await setup.write(upTo);
    if (slow) {
      for (let off = 6 << 20; off < (6 << 20) + (256 << 10); off += 64 << 10) assert.equal((await writer.write10(off / 512, randomBytes(64 << 10))).status, 0);
    }
    await until('the fold of unshipped records', () => logged(primary, 'journal over its cap with the replica behind'));
    const m = await metrics(primary);
    assert.ok((metricValue(m, 'offsite_journal_folded_unshipped_records_total') ?? 0) > 0, 'the metric counts the unshipped records folded');
    // The log line comes as the fold begins; the records go when it ends.
    const oldest = async () => ((await primary.status()).journal as { oldestSeq: number }).oldestSeq;
    await until('the folded records to leave the journal', async () => (await oldest()) > held + 1).catch(() => undefined);
    const oldestSeq = await oldest();
    assert.ok(oldestSeq > held + 1, `the primary no longer holds record ${held + 1} (oldest ${oldestSeq})`);
    return setup;
  } catch (e) {
    writer.destroy();
    await primary.stop();
    await replica.stop();
    removeDir(dir);
    throw e;
  }
}

test('delta sync after the primary folded unshipped records: staged whole at the replica, never a mixed state, a crash while staging resumes', { timeout: 300_000 }, async () => {
  const { dir, bDir, replPort, primary, writer, write, bandwidth } = await replicaLeftBehind('delta-writer', 1500, 4000, '16KB/s');
  let replica: RunningAppliance | undefined;
  const tops: number[] = [];
  const errors: string[] = [];
  // From now on, every read of the replica must be a prefix of the chain.
  let reader: ReturnType<typeof pollReplica> | undefined = pollReplica(() => replica, VOLUME, 8 * 1024 * 1024, dir, (img) => {
    const c = checkChainImage(img, N);
    tops.push(c.top);
    if (c.error) errors.push(c.error);
  });
  try {
    replica = await startReplica(bDir, replPort);
    const first = replica;
    await until('a staged delta sync', () => logged(first, 'sync start: staged whole'));
    const st = await first.status();
    assert.equal(st.stagingDeltaSync, true);
    assert.equal(st.state, 'consistent', 'staging keeps the replica consistent at its old point');
    assert.equal(st.appliedSeq, 1500);
    // Writes keep coming during the sync (the journal tail the commit must include).
    await write(4300);
    assert.ok(!logged(first, 'staged delta sync committed'), 'the sync was meant to be still staging here (16 KB/s)');
    await first.kill('SIGKILL');
    replica = undefined;

    replica = await startReplica(bDir, replPort);
    const second = replica;
    // Straight after the restart: the old consistent point, whole.
    const after = checkChainImage(await readVolume(second, VOLUME, path.join(dir, 'r1.img')), N);
    assert.equal(after.error, undefined);
    assert.ok(after.top === 1500 || logged(second, 'staged delta sync committed'), `after the crash the replica shows record ${after.top}`);
    await write(4500);
    await new Promise((r) => setTimeout(r, 1500));
    await bandwidth('unlimited');
    await waitCaughtUp(primary, second, 120_000);
    await until('the log line of the commit', () => logged(second, 'staged delta sync committed'), 5000);
    await reader.stop();
    reader = undefined;
    assert.deepEqual(errors, [], 'a replica read showed a mixed state');
    assert.ok(tops.includes(1500), `reads during the staging showed the old consistent point (tops seen: ${[...new Set(tops)].join(', ')})`);
    assert.ok(tops.every((t) => t === 1500 || t >= 4000), `only the old point or a point after the sync (tops seen: ${[...new Set(tops)].join(', ')})`);
    await assertSameVolume(primary, second, VOLUME, dir);
    const pm = await metrics(primary);
    const sent = metricValue(pm, 'offsite_sync_chunks_sent_total') ?? 0;
    assert.ok(sent >= 68 && sent <= 2 * (65 + 4), `only the changed chunks are sent (65 of the chain region, 4 of random data; the crash may resend some): ${sent}`);
    assert.ok((metricValue(pm, 'offsite_sync_chunks_skipped_total') ?? 0) > 0, 'unchanged chunks are skipped');
  } finally {
    await reader?.stop();
    writer.destroy();
    await primary.stop();
    await replica?.stop();
    removeDir(dir);
  }
});

test('promoting a replica while a delta sync is staged: the staged sync is given up and the volumes become writable at the old consistent point', { timeout: 180_000 }, async () => {
  const { dir, bDir, replPort, primary, writer } = await replicaLeftBehind('delta-writer-2', 1200, 3600, '8KB/s');
  let replica: RunningAppliance | undefined;
  try {
    replica = await startReplica(bDir, replPort);
    const r = replica;
    await until('a staged delta sync', () => logged(r, 'sync start: staged whole'));
    // The primary is "lost" now: promote the replica in the middle of its staged sync, without --force.
    await primary.kill('SIGKILL');
    const p = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${r.httpPort}`]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /writable at sequence 1200\b/);
    assert.ok(logged(r, 'staged delta sync abandoned'));
    const img = await readVolume(r, VOLUME, path.join(dir, 'promoted.img'));
    assert.deepEqual(checkChainImage(img, N), { top: 1200 }, 'the promoted volumes hold the old consistent point, whole');
    // Writable, and the next records land after it.
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 7M 64k', '-c', 'read -P 0x5a 7M 64k', r.url(VOLUME)]);
    assert.equal(w.code, 0, w.stderr);
    assert.doesNotMatch(w.stdout, /verification failed/);
    const st = await r.status();
    assert.equal(st.role, 'primary');
    assert.ok((st.headSeq as number) > 1200);
  } finally {
    writer.destroy();
    await primary.stop();
    await replica?.stop();
    removeDir(dir);
  }
});

test('a replica killed half-way through committing a staged delta sync redoes the commit before it serves: the new consistent point, whole', { timeout: 180_000 }, async () => {
  const { dir, bDir, replPort, primary, writer } = await replicaLeftBehind('delta-writer-3', 1500, 4000);
  let replica: RunningAppliance | undefined;
  try {
    // This replica process dies (SIGKILL, by a test-only failpoint) half-way through its commit.
    replica = await startReplica(bDir, replPort, [], { OFFSITE_FAILPOINT: 'replica-commit-midway' });
    const dying = replica;
    await until('the failpoint', () => dying.proc.signalCode !== null || dying.proc.exitCode !== null);
    assert.equal(dying.proc.signalCode, 'SIGKILL');
    assert.ok(logged(dying, 'sync end: staged'));
    assert.ok(!logged(dying, 'staged delta sync committed'));
    // Restarted with the primary gone (nothing new arrives before the first read): the commit is redone before serving.
    await primary.stop();
    replica = await startReplica(bDir, replPort);
    assert.ok(logged(replica, 'a staged delta sync was being committed when the appliance stopped'));
    const img = await readVolume(replica, VOLUME, path.join(dir, 'redone.img'));
    assert.deepEqual(checkChainImage(img, N), { top: 4000 }, 'the new consistent point, whole');
    const st = await replica.status();
    assert.equal(st.state, 'consistent');
    assert.equal(st.appliedSeq, 4000);
    assert.equal(st.stagingDeltaSync, false);
  } finally {
    writer.destroy();
    await primary.stop();
    await replica?.stop();
    removeDir(dir);
  }
});
