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

const N = 1024; // chain blocks: 4 MiB of an 8 MiB volume
const VOLUME = 'dv';

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('delta sync after the primary folded unshipped records: staged whole at the replica, never a mixed state, a crash while staging resumes', { timeout: 300_000 }, async () => {
  const dir = tempDir();
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  let replica: RunningAppliance | undefined = await startReplica(bDir, replPort);
  const primary = await startPrimary(path.join(dir, 'a'), [`${VOLUME}:8M`], replPort, ['--journal-max', '1M']);
  // The link's bandwidth cap (on wire bytes; chain blocks compress well): a low one keeps the delta sync running for seconds.
  const bandwidth = async (rate: string) => {
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bandwidth`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ rate }) });
    assert.equal(res.status, 200);
  };
  const writer = await RawInitiator.session(primary.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:delta-writer', targetName: `${TARGET_PREFIX}:${VOLUME}` });
  let k = 0;
  const write = async (upTo: number) => {
    while (k < upTo) {
      k++;
      const r = await writer.write10((((k - 1) % N) + 1) * 8, chainBlock(k));
      assert.equal(r.status, 0, `write of record ${k}`);
    }
  };
  const tops: number[] = [];
  const errors: string[] = [];
  let reader: ReturnType<typeof pollReplica> | undefined;
  try {
    await write(1500);
    await waitCaughtUp(primary, replica);
    const held = checkChainImage(await readVolume(replica, VOLUME, path.join(dir, 'r0.img')), N);
    assert.deepEqual(held, { top: 1500 });

    // The replica goes away; the primary keeps writing far past its cap.
    await bandwidth('16KB/s');
    await replica.stop();
    replica = undefined;
    await write(4000);
    // Incompressible data outside the chain region, so the delta sync cannot slip through the shaper's burst.
    for (let off = 6 << 20; off < (6 << 20) + (256 << 10); off += 64 << 10) {
      const r = await writer.write10(off / 512, randomBytes(64 << 10));
      assert.equal(r.status, 0);
    }
    await until('the fold of unshipped records', () => primary.logs.some((l) => String(l.msg).startsWith('journal over its cap with the replica behind')));
    const m = await metrics(primary);
    assert.ok((metricValue(m, 'offsite_journal_folded_unshipped_records_total') ?? 0) > 0, 'the metric counts the unshipped records folded');
    const journal = (await primary.status()).journal as { oldestSeq: number };
    assert.ok(journal.oldestSeq > 1501, `the primary no longer holds record 1501 (oldest ${journal.oldestSeq})`);

    // From now on, every read of the replica must be a prefix of the chain.
    reader = pollReplica(() => replica, VOLUME, dir, (img) => {
      const c = checkChainImage(img, N);
      tops.push(c.top);
      if (c.error) errors.push(c.error);
    });
    replica = await startReplica(bDir, replPort);
    const first = replica;
    await until('a staged delta sync', async () => first.logs.some((l) => String(l.msg).startsWith('sync start: staged whole')));
    assert.equal((await first.status()).stagingDeltaSync, true);
    assert.equal((await first.status()).state, 'consistent', 'staging keeps the replica consistent at its old point');
    assert.equal((await first.status()).appliedSeq, 1500);
    // Writes keep coming during the sync (the journal tail the commit must include).
    await write(4300);
    assert.ok(!first.logs.some((l) => String(l.msg).startsWith('staged delta sync committed')), 'the sync was meant to be still staging here (16 KB/s)');
    await first.kill('SIGKILL');
    replica = undefined;

    replica = await startReplica(bDir, replPort);
    const second = replica;
    // Straight after the restart: the old consistent point, whole.
    const after = checkChainImage(await readVolume(second, VOLUME, path.join(dir, 'r1.img')), N);
    assert.equal(after.error, undefined);
    assert.ok(after.top === 1500 || second.logs.some((l) => String(l.msg).startsWith('staged delta sync committed')), `after the crash the replica shows record ${after.top}`);
    await write(4500);
    await new Promise((r) => setTimeout(r, 1500));
    await bandwidth('unlimited');
    await waitCaughtUp(primary, second, 120_000);
    await until('the log line of the commit', () => second.logs.some((l) => String(l.msg).startsWith('staged delta sync committed')), 5000);
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
  const dir = tempDir();
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  let replica = await startReplica(bDir, replPort);
  const primary = await startPrimary(path.join(dir, 'a'), [`${VOLUME}:8M`], replPort, ['--journal-max', '1M']);
  const writer = await RawInitiator.session(primary.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:delta-writer-2', targetName: `${TARGET_PREFIX}:${VOLUME}` });
  try {
    for (let k = 1; k <= 1200; k++) assert.equal((await writer.write10((((k - 1) % N) + 1) * 8, chainBlock(k))).status, 0);
    await waitCaughtUp(primary, replica);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bandwidth`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ rate: '8KB/s' }) });
    assert.equal(res.status, 200);
    await replica.stop();
    for (let k = 1201; k <= 3600; k++) assert.equal((await writer.write10((((k - 1) % N) + 1) * 8, chainBlock(k))).status, 0);
    for (let off = 6 << 20; off < (6 << 20) + (256 << 10); off += 64 << 10) assert.equal((await writer.write10(off / 512, randomBytes(64 << 10))).status, 0);
    await until('the fold of unshipped records', () => primary.logs.some((l) => String(l.msg).startsWith('journal over its cap with the replica behind')));
    replica = await startReplica(bDir, replPort);
    const r = replica;
    await until('a staged delta sync', () => r.logs.some((l) => String(l.msg).startsWith('sync start: staged whole')));
    // The primary is "lost" now: promote the replica in the middle of its staged sync, without --force.
    await primary.kill('SIGKILL');
    const p = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${r.httpPort}`]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /writable at sequence 1200\b/);
    assert.ok(r.logs.some((l) => String(l.msg).startsWith('staged delta sync abandoned')));
    const img = await readVolume(r, VOLUME, path.join(dir, 'promoted.img'));
    assert.deepEqual(checkChainImage(img, N), { top: 1200 }, 'the promoted volumes hold the old consistent point, whole');
    // Writable, and the next records land after it.
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 7M 64k', '-c', 'read -P 0x5a 7M 64k', r.url(VOLUME)]);
    assert.equal(w.code, 0, w.stderr);
    assert.doesNotMatch(w.stdout, /verification failed/);
    assert.equal((await r.status()).role, 'primary');
    assert.equal(((await r.status()).headSeq as number) > 1200, true);
  } finally {
    writer.destroy();
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('a replica killed half-way through committing a staged delta sync redoes the commit before it serves: the new consistent point, whole', { timeout: 180_000 }, async () => {
  const dir = tempDir();
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  let replica = await startReplica(bDir, replPort);
  const primary = await startPrimary(path.join(dir, 'a'), [`${VOLUME}:8M`], replPort, ['--journal-max', '1M']);
  const writer = await RawInitiator.session(primary.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:delta-writer-3', targetName: `${TARGET_PREFIX}:${VOLUME}` });
  try {
    for (let k = 1; k <= 1500; k++) assert.equal((await writer.write10((((k - 1) % N) + 1) * 8, chainBlock(k))).status, 0);
    await waitCaughtUp(primary, replica);
    await replica.stop();
    for (let k = 1501; k <= 4000; k++) assert.equal((await writer.write10((((k - 1) % N) + 1) * 8, chainBlock(k))).status, 0);
    await until('the fold of unshipped records', () => primary.logs.some((l) => String(l.msg).startsWith('journal over its cap with the replica behind')));
    // This replica process dies (SIGKILL, by a test-only failpoint) half-way through its commit.
    replica = await startReplica(bDir, replPort, [], { OFFSITE_FAILPOINT: 'replica-commit-midway' });
    const dying = replica;
    await until('the failpoint', () => dying.proc.signalCode !== null || dying.proc.exitCode !== null, 60_000);
    assert.equal(dying.proc.signalCode, 'SIGKILL');
    assert.ok(dying.logs.some((l) => String(l.msg).startsWith('sync end: staged')));
    assert.ok(!dying.logs.some((l) => String(l.msg).startsWith('staged delta sync committed')));
    // Restarted (link cut meanwhile so nothing new arrives before the first read): the commit is redone before serving.
    await primary.stop();
    replica = await startReplica(bDir, replPort);
    assert.ok(replica.logs.some((l) => String(l.msg).startsWith('a staged delta sync was being committed when the appliance stopped')));
    const img = await readVolume(replica, VOLUME, path.join(dir, 'redone.img'));
    assert.deepEqual(checkChainImage(img, N), { top: 4000 }, 'the new consistent point, whole');
    const st = await replica.status();
    assert.equal(st.state, 'consistent');
    assert.equal(st.appliedSeq, 4000);
    assert.equal(st.stagingDeltaSync, false);
  } finally {
    writer.destroy();
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
