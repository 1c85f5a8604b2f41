/**
 * Online verify: `offsite verify` compares a running primary's volumes with its replica's while
 * writes and replication go on, names the chunks that differ, and with --repair rewrites them
 * from the primary. Real appliances, qemu-io writing through iSCSI, the replica's image damaged
 * on disk behind its back.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, damageVolumeFile, freePort, metricValue, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

const MiB = 1 << 20;
const CHUNK = 64 * 1024;

type Range = { volume: string; offsetBytes: number; lengthBytes: number };
type Verify = { state: string; repair: boolean; repairedChunks: number; totalBytes: number; checkedBytes: number; mismatchedChunks: number; mismatchedBytes: number; unverifiedBytes: number; retries: number; mismatches: Range[]; unverified: Range[]; error?: string };
const verifyStatus = async (a: RunningAppliance): Promise<Verify> => (await a.status()).verify as Verify;
const cli = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'verify', '--http', `127.0.0.1:${a.httpPort}`, ...args], { timeoutMs: 120_000 });

test('verify: equal volumes pass; chunks damaged on the replica are named and repaired, also while writes go on; no false difference under load', { timeout: 300_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const bDir = path.join(dir, 'b');
  const replica = await startReplica(bDir, replPort);
  let primary = await startPrimary(path.join(dir, 'a'), ['data:16M', 'busy:8M'], replPort);
  try {
    // Data in both volumes (patterns and zeros), replicated.
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x22 5M 1M', '-c', 'write -P 0x33 12M 2M', '-c', 'write -z 13M 64k', primary.url('data')]);
    assert.equal(r.code, 0, r.stderr);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 8M', primary.url('busy')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);

    assert.equal((await verifyStatus(primary)).state, 'idle');
    r = await cli(primary, '--wait');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /verify done .*: 24\.0 MiB compared, no difference/);
    let v = await verifyStatus(primary);
    assert.equal(v.state, 'done');
    assert.equal(v.checkedBytes, 24 * MiB);
    assert.equal(v.totalBytes, 24 * MiB);
    assert.equal(v.mismatchedChunks, 0);

    // Damage the replica's copy: one byte in one chunk, and 4 KiB across the boundary of two.
    damageVolumeFile(bDir, 'data', 5 * MiB + 100, Buffer.from([0x99]));
    damageVolumeFile(bDir, 'data', 12 * MiB - 2048, Buffer.alloc(4096, 0x77));
    r = await cli(primary, '--wait');
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.match(r.stdout, /3 chunks DIFFER \(192\.0 KiB\)/);
    assert.match(r.stdout, new RegExp(`differs: data bytes ${5 * MiB}\\.\\.${5 * MiB + CHUNK - 1} `));
    assert.match(r.stdout, new RegExp(`differs: data bytes ${12 * MiB - CHUNK}\\.\\.${12 * MiB + CHUNK - 1} `));
    v = await verifyStatus(primary);
    assert.deepEqual(v.mismatches, [
      { volume: 'data', offsetBytes: 5 * MiB, lengthBytes: CHUNK },
      { volume: 'data', offsetBytes: 12 * MiB - CHUNK, lengthBytes: 2 * CHUNK },
    ]);
    assert.equal(metricValue(await metrics(primary), 'offsite_verify_mismatched_chunks'), 3);
    assert.equal(metricValue(await metrics(replica), 'offsite_replica_verify_mismatched_chunks_total'), 3);
    assert.ok(replica.logs.some((l) => l.msg === 'verify: chunks differ from the primary'));
    assert.deepEqual((await replica.status()).verified, { comparedBytes: 48 * MiB, mismatchedChunks: 3, repairedBytes: 0 });
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${replica.httpPort}`]);
    assert.match(r.stdout, /verified: +48\.0 MiB compared with the primary since start, 3 chunks DIFFERED/);
    assert.ok(primary.logs.some((l) => l.msg === 'verify found chunks that differ on the replica'));

    // --repair: the differing chunks are overwritten with the primary's data; then all is equal.
    r = await cli(primary, '--repair', '--wait');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /3 chunks differed \(192\.0 KiB, all repaired\)/);
    v = await verifyStatus(primary);
    assert.equal(v.repairedChunks, 3);
    assert.equal(metricValue(await metrics(replica), 'offsite_replica_verify_repaired_bytes_total'), 3 * CHUNK);
    r = await cli(primary, '--wait');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /no difference/);
    await assertSameVolume(primary, replica, 'data', dir);

    // While writes go on: the link is capped and a burst puts the replica seconds behind, and one
    // range is rewritten all the while, so its probes are overtaken before the stream reaches them
    // (hashed again, then chunk by chunk). No difference may be reported that is not there, and a
    // damaged chunk away from the writes is still found.
    damageVolumeFile(bDir, 'busy', 7 * MiB + 4096, Buffer.alloc(512, 0x55));
    const bw = (...a: string[]) => run(process.execPath, [CLI, 'bandwidth', '--http', `127.0.0.1:${primary.httpPort}`, ...a]);
    assert.equal((await bw('2MB/s')).code, 0);
    let writing = false;
    let writes = 0;
    /** Rewrite 0..16k and 512k..528k of busy over and over, behind a 3 MiB burst the capped link takes 1.5 s to carry. */
    const underLoad = async <T>(fn: () => Promise<T>): Promise<T> => {
      writing = true;
      const hot = (async () => {
        for (let i = 0; writing; i++) {
          const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${i % 250} 0 16k`, '-c', `write -P ${(i + 1) % 250} 512k 16k`, primary.url('busy')]);
          assert.equal(w.code, 0, w.stderr);
          writes += 2;
        }
      })();
      try {
        const noise = path.join(dir, 'noise.bin');
        writeFileSync(noise, randomBytes(3 * MiB)); // incompressible: lz4 cannot shrink the backlog away
        const b = await run('qemu-io', ['-f', 'raw', '-c', `write -s ${noise} 1M 3M`, primary.url('busy')]);
        assert.equal(b.code, 0, b.stderr);
        return await fn();
      } finally {
        writing = false;
        await hot;
      }
    };
    r = await underLoad(() => cli(primary, '--volume', 'busy', '--wait'));
    v = await verifyStatus(primary);
    assert.deepEqual(v.mismatches, [{ volume: 'busy', offsetBytes: 7 * MiB, lengthBytes: CHUNK }], r.stdout);
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.equal(v.checkedBytes + v.unverifiedBytes, 8 * MiB);
    assert.ok(v.retries > 0, 'writes overtook some probes');
    assert.ok(v.unverified.every((u) => u.volume === 'busy' && u.offsetBytes + u.lengthBytes <= 1 * MiB), `only the rewritten range may stay unverified: ${JSON.stringify(v.unverified)}`);
    process.stdout.write(`# verify under load: ${writes} writes, ${v.retries} probes overtaken, ${v.unverifiedBytes} bytes not compared\n`);
    // Caught up and quiet: everything is compared, and only the damage differs.
    assert.equal((await bw('--reset')).code, 0);
    await waitCaughtUp(primary, replica);
    r = await cli(primary, '--volume', 'busy', '--wait');
    assert.equal(r.code, 3, r.stdout);
    v = await verifyStatus(primary);
    assert.equal(v.unverifiedBytes, 0);
    assert.equal(v.mismatchedChunks, 1);

    // The last result outlives a restart of the primary.
    await primary.stop();
    primary = await startPrimary(path.join(dir, 'a'), [], replPort);
    v = await verifyStatus(primary);
    assert.equal(v.state, 'done');
    assert.equal(v.mismatchedChunks, 1);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(r.stdout, /verify: +done .*1 chunk DIFFERS \(64\.0 KiB\)/);

    // --repair while writes go on, with a damaged chunk among the rewritten ones (beyond the
    // bytes the writes cover, so replication never mends it by itself). A repair is placed in the
    // stream like a comparison: whatever it reports repaired must compare equal afterwards.
    damageVolumeFile(bDir, 'busy', 32 * 1024 + 100, Buffer.alloc(100, 0x5a));
    assert.equal((await bw('2MB/s')).code, 0);
    r = await underLoad(() => cli(primary, '--volume', 'busy', '--repair', '--wait'));
    v = await verifyStatus(primary);
    assert.ok(v.mismatches.every((m) => (m.offsetBytes === 0 || m.offsetBytes === 7 * MiB) && m.lengthBytes === CHUNK), `only the damaged chunks may differ: ${JSON.stringify(v.mismatches)}`);
    assert.ok(v.mismatches.some((m) => m.offsetBytes === 7 * MiB), r.stdout);
    assert.ok(v.repair && v.repairedChunks >= 1, r.stdout);
    const repairedUnderLoad = v.repairedChunks === v.mismatchedChunks ? v.mismatches.map((m) => m.offsetBytes) : [];
    process.stdout.write(`# repair under load: ${r.stdout.split('\n')[0]}\n`);
    assert.equal((await bw('--reset')).code, 0);
    await waitCaughtUp(primary, replica);
    r = await cli(primary, '--volume', 'busy', '--wait');
    v = await verifyStatus(primary);
    assert.equal(v.unverifiedBytes, 0);
    for (const m of v.mismatches) assert.ok(m.offsetBytes === 0 && !repairedUnderLoad.includes(0), `a chunk repaired under load differs again: ${JSON.stringify(v.mismatches)}`);
    r = await cli(primary, '--volume', 'busy', '--repair', '--wait');
    assert.equal(r.code, 0, r.stdout);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'busy', dir);

    // Refusals: an unknown volume, a second run while one runs, the replica, a bad request.
    r = await cli(primary, '--volume', 'nope');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no volume nope .*\[UNKNOWN_VOLUME\]/);
    await waitCaughtUp(primary, replica);
    r = await cli(primary, '--rate', '2MB/s');
    assert.equal(r.code, 0, r.stderr);
    r = await cli(primary);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /\[VERIFY_RUNNING\]/);
    r = await cli(primary, '--stop');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /verify stopped at \d+%/);
    assert.equal((await verifyStatus(primary)).state, 'stopped');
    r = await cli(primary, '--stop');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no verify is running \[VERIFY_NOT_RUNNING\]/);
    r = await cli(replica);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /\[NOT_REPLICATING\]/);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/verify`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ volumes: 'data' }) });
    assert.equal(res.status, 400);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('verify on a schedule: --verify-every runs it by itself (rate-capped), reports what differs, and keeps its rhythm across a restart', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const bDir = path.join(dir, 'b');
  const replica = await startReplica(bDir, replPort);
  const args = ['--verify-every', '2s', '--verify-rate', '50MB/s'];
  let primary = await startPrimary(path.join(dir, 'a'), ['sched:4M', 'other:1M'], replPort, args);
  type Scheduled = Verify & { trigger: string; startedAt?: string; finishedAt?: string; scheduleEverySeconds: number; nextScheduledAt?: string };
  const sched = async () => (await primary.status()).verify as Scheduled;
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 4M', primary.url('sched')]);
    assert.equal(r.code, 0, r.stderr);
    let v = await sched();
    assert.equal(v.scheduleEverySeconds, 2);
    assert.ok(v.nextScheduledAt, 'the next run is announced');
    await until('a scheduled run to pass', async () => {
      v = await sched();
      return v.trigger === 'schedule' && v.state === 'done';
    }, 30_000, 100);
    assert.equal(v.mismatchedChunks, 0);
    assert.equal(v.checkedBytes, 5 * MiB);
    assert.equal(Date.parse(v.nextScheduledAt!), Date.parse(v.startedAt!) + 2000);
    assert.ok(primary.logs.some((l) => l.msg === 'verify started: comparing the volumes with the replica' && l.trigger === 'schedule' && l.rateBytesPerSec === 50_000_000));

    // Damage on the replica is found by the next scheduled run, without anyone asking.
    await waitCaughtUp(primary, replica);
    const damagedAt = Date.now();
    damageVolumeFile(bDir, 'sched', MiB + 7, Buffer.from([0xfe]));
    await until('a scheduled run after the damage to report it', async () => {
      v = await sched();
      return v.trigger === 'schedule' && v.state === 'done' && Date.parse(v.startedAt!) > damagedAt;
    }, 30_000, 100);
    assert.deepEqual(v.mismatches, [{ volume: 'sched', offsetBytes: MiB, lengthBytes: CHUNK }]);
    const m = await metrics(primary);
    assert.equal(metricValue(m, 'offsite_verify_schedule_seconds'), 2);
    assert.equal(metricValue(m, 'offsite_verify_mismatched_chunks'), 1);
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(r.stdout, /verify: .*1 chunk DIFFERS.*\(scheduled\)/);
    assert.match(r.stdout, /every 2 s; next /);

    // After a restart the schedule counts from the last run, kept with its result (an hourly
    // one here, so that no run starts meanwhile), not from the restart.
    await primary.stop();
    const last = JSON.parse(readFileSync(path.join(dir, 'a', 'state', 'verify.json'), 'utf8')) as Scheduled;
    primary = await startPrimary(path.join(dir, 'a'), [], replPort, ['--verify-every', '1h']);
    v = await sched();
    assert.equal(v.startedAt, last.startedAt);
    assert.equal(v.scheduleEverySeconds, 3600);
    assert.equal(Date.parse(v.nextScheduledAt!), Date.parse(last.startedAt!) + 3_600_000);
    // A run over some volumes only (an operator's --volume) leaves the rhythm alone.
    const fullStart = v.startedAt;
    r = await cli(primary, '--volume', 'other', '--wait');
    assert.equal(r.code, 0, r.stdout);
    v = await sched();
    assert.notEqual(v.startedAt, fullStart);
    assert.equal(Date.parse(v.nextScheduledAt!), Date.parse(fullStart!) + 3_600_000);

    // A schedule shorter than a second, or without a replica to compare with, is refused at start.
    for (const [extra, message] of [
      [['--replicate-to', '127.0.0.1:1', '--insecure-link', '--verify-every', '500ms'], /verify-every: at least 1s/],
      [['--verify-every', '1d'], /verify-every: online verify compares with a replica/],
    ] as [string[], RegExp][]) {
      r = await run(process.execPath, [CLI, 'serve', '--data', path.join(dir, 'c'), '--volume', 'x:1M', ...extra]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
    }
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
