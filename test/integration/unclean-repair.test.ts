/**
 * src/appliance/replication.ts (checkRepairDue) and appliance.ts (repairDue): after an unclean
 * stop a primary's image may hold a write whose journal record was lost (image and journal reach
 * the disk independently); the replica never gets it. The primary's next start runs a repair
 * (an online verify with --repair over every volume) once the replica is there, and keeps it due
 * across restarts until one has finished. Simulated: the primary is killed, and a block of its
 * image file is changed behind the journal's back before it starts again. The repair covers the
 * regions the write-intent maps (src/volume/write-intent.ts) had marked: those written since
 * the last checkpoint.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, damageVolumeFile, freePort, metrics, metricValue, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';
import { readIntentFile, type IntentFound } from '../../src/volume/write-intent';

type Verify = { state: string; trigger: string; repair: boolean; repairedChunks: number; mismatchedChunks: number; totalBytes: number; checkedBytes: number };

const MiB = 1024 * 1024;
const REGION = 64 * MiB;

async function marked(dataDir: string, volume: string): Promise<IntentFound> {
  return readIntentFile(path.join(dataDir, 'state', volume, 'write-intent.map'));
}

/** The repair run after an unclean stop, once it has ended. */
async function repairRun(primary: RunningAppliance, timeoutMs: number): Promise<Verify> {
  await until('the repair run to finish', async () => {
    const v = (await primary.status()).verify as Verify | undefined;
    return v?.trigger === 'unclean-stop' && v.state !== 'running';
  }, timeoutMs, 200);
  return (await primary.status()).verify as Verify;
}

/** A replica and a primary (these volumes, these arguments) in a fresh directory; whichever runs at the end is stopped. */
interface Sites {
  dir: string;
  aDir: string;
  replPort: number;
  primary: RunningAppliance;
  replica: RunningAppliance;
}

async function withSites(volumes: string[], args: string[], body: (s: Sites) => Promise<void>): Promise<void> {
  const dir = tempDir();
  const replPort = await freePort();
  const s = { dir, aDir: path.join(dir, 'a'), replPort } as Sites;
  try {
    s.replica = await startReplica(path.join(dir, 'b'), replPort);
    s.primary = await startPrimary(s.aDir, volumes, replPort, args);
    await body(s);
  } finally {
    await s.primary?.stop();
    await s.replica?.stop();
    removeDir(dir);
  }
}

async function qemuIo(url: string, cmd: string): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', '-c', cmd, url]);
  assert.equal(r.code, 0, r.stderr);
}

test('after an unclean stop the primary repairs the replica where its image holds a write the journal lost', { timeout: 120_000 }, async () => {
  await withSites(['v:16M'], [], async (s) => {
    const { dir, aDir, replPort } = s;
    await qemuIo(s.primary.url('v'), 'write -P 3 0 1M');
    await waitCaughtUp(s.primary, s.replica);
    await s.primary.kill('SIGKILL');
    // The power went: this block reached the image, its record never reached the journal.
    damageVolumeFile(aDir, 'v', 5 << 20, Buffer.alloc(4096, 0x5a));
    s.primary = await startPrimary(aDir, [], replPort);
    assert.ok(existsSync(path.join(aDir, 'state', 'repair-due.json')), 'the repair is recorded as due');
    const v = await repairRun(s.primary, 60_000);
    assert.equal(v.state, 'done');
    assert.equal(v.repair, true);
    assert.equal(v.mismatchedChunks, 1);
    assert.equal(v.repairedChunks, 1);
    const st = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${s.primary.httpPort}`]);
    assert.match(st.stdout, /^verify: .*\(repair after an unclean stop\)$/m);
    await until('the repair to be recorded as done', async () => !existsSync(path.join(aDir, 'state', 'repair-due.json')), 10_000, 100);
    await waitCaughtUp(s.primary, s.replica);
    await assertSameVolume(s.primary, s.replica, 'v', dir);
    // A clean restart: nothing is due.
    await s.primary.stop();
    s.primary = await startPrimary(aDir, [], replPort);
    await waitCaughtUp(s.primary, s.replica);
    assert.ok(!s.primary.logs.some((l) => String(l.msg).startsWith('repair run after an unclean stop')));
  });
});

test('the repair after an unclean stop covers only the regions being written then (write-intent maps)', { timeout: 180_000 }, async () => {
  await withSites(['v:512M'], [], async (s) => {
    const { dir, aDir, replPort } = s;
    // Region 2, written with FUA: the checkpoint that follows unmarks it.
    await qemuIo(s.primary.url('v'), `write -f -P 1 ${2 * REGION} 1M`);
    await until('the checkpoint to unmark region 2', async () => JSON.stringify(await marked(aDir, 'v')) === JSON.stringify({ ranges: [] }), 60_000, 200);
    // Regions 0 and 6, written and not checkpointed when the power goes.
    await qemuIo(s.primary.url('v'), 'write -P 2 0 1M');
    await qemuIo(s.primary.url('v'), `write -P 3 ${6 * REGION + 8 * MiB} 1M`);
    assert.deepEqual(await marked(aDir, 'v'), { ranges: [{ offsetBytes: 0, lengthBytes: REGION }, { offsetBytes: 6 * REGION, lengthBytes: REGION }] });
    const vols = (await s.primary.status()).volumes as { name: string; writeIntentBytes: number }[];
    assert.equal(vols.find((x) => x.name === 'v')?.writeIntentBytes, 2 * REGION);
    assert.equal(metricValue(await metrics(s.primary), 'offsite_volume_write_intent_bytes', 'volume="v"'), 2 * REGION);
    await waitCaughtUp(s.primary, s.replica);
    await s.primary.kill('SIGKILL');
    // Blocks of the marked regions reached the image, their records never reached the journal.
    damageVolumeFile(aDir, 'v', 3 * MiB, Buffer.alloc(4096, 0x5a));
    damageVolumeFile(aDir, 'v', 6 * REGION + 20 * MiB, Buffer.alloc(4096, 0x6b));
    // The replica away: the repair waits for it, and says so.
    await s.replica.stop();
    s.primary = await startPrimary(aDir, [], replPort);
    const due = ((await s.primary.status()).replication as { repairDue: unknown }).repairDue;
    assert.deepEqual(due, { since: (due as { since: string }).since, running: false, ranges: 2, bytes: 2 * REGION });
    const st = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${s.primary.httpPort}`]);
    assert.match(st.stdout, /^repair: +due since \S+ \(unclean stop\): 128\.0 MiB in 2 ranges being written then to compare with the replica/m);
    s.replica = await startReplica(path.join(dir, 'b'), replPort);
    const v = await repairRun(s.primary, 90_000);
    assert.equal(v.state, 'done');
    assert.equal(v.totalBytes, 2 * REGION, 'two regions of eight compared');
    assert.equal(v.checkedBytes, 2 * REGION);
    assert.equal(v.mismatchedChunks, 2);
    assert.equal(v.repairedChunks, 2);
    assert.deepEqual(await marked(aDir, 'v'), { ranges: [] }, 'the map starts clear once the repair due holds what it had');
    await until('the repair to be no longer due', async () => ((await s.primary.status()).replication as { repairDue: unknown }).repairDue === null, 10_000, 100);
    await waitCaughtUp(s.primary, s.replica);
    await assertSameVolume(s.primary, s.replica, 'v', dir);
  });
});

test('an unclean stop with no region being written leaves no repair due; a map that cannot be read means the whole volume', { timeout: 120_000 }, async () => {
  await withSites(['v:128M'], [], async (s) => {
    const { aDir, replPort } = s;
    await qemuIo(s.primary.url('v'), 'write -f -P 4 0 1M');
    await until('the checkpoint to unmark region 0', async () => JSON.stringify(await marked(aDir, 'v')) === JSON.stringify({ ranges: [] }), 60_000, 200);
    await waitCaughtUp(s.primary, s.replica);
    await s.primary.kill('SIGKILL');
    s.primary = await startPrimary(aDir, [], replPort);
    assert.ok(s.primary.logs.some((l) => String(l.msg).startsWith('unclean stop: the write-intent maps show no region being written')), 'said why nothing is due');
    assert.ok(!existsSync(path.join(aDir, 'state', 'repair-due.json')), 'no repair due');
    await waitCaughtUp(s.primary, s.replica);
    assert.equal(((await s.primary.status()).verify as Verify | undefined)?.trigger === 'unclean-stop', false);
    // The map replaced by something else: the whole volume is repaired.
    await s.primary.kill('SIGKILL');
    writeFileSync(path.join(aDir, 'state', 'v', 'write-intent.map'), 'garbage');
    s.primary = await startPrimary(aDir, [], replPort);
    assert.ok(s.primary.logs.some((l) => l.msg === 'write-intent map unusable after the unclean stop: the repair covers the whole volume' && l.volume === 'v'));
    const v = await repairRun(s.primary, 60_000);
    assert.equal(v.state, 'done');
    assert.equal(v.totalBytes, 128 * MiB);
  });
});

test('unclean stops while not replicating keep the repair due (their regions joined) until the primary replicates again', { timeout: 120_000 }, async () => {
  // With a history window the records stay, so the replica resumes from its point (no resync
  // that would copy the image anyway): only the repair brings it the lost write.
  const retain = ['--journal-retain', '1h'];
  await withSites(['v:256M'], retain, async (s) => {
    const { dir, aDir, replPort } = s;
    await qemuIo(s.primary.url('v'), 'write -P 5 0 1M');
    await waitCaughtUp(s.primary, s.replica);
    await s.primary.stop();
    // Started without --replicate-to for a while, and stopped uncleanly there.
    s.primary = await startAppliance({ dataDir: aDir, volumes: [], args: retain });
    await qemuIo(s.primary.url('v'), `write -P 6 ${REGION} 1M`);
    await s.primary.kill('SIGKILL');
    damageVolumeFile(aDir, 'v', REGION + 2 * MiB, Buffer.alloc(4096, 0x7c));
    s.primary = await startAppliance({ dataDir: aDir, volumes: [], args: retain });
    assert.ok(s.primary.logs.some((l) => String(l.msg).startsWith('a repair after an unclean stop is due: it runs once this primary replicates again')));
    // A second unclean stop before the repair ran: its regions join the due ones, region 1 once.
    await qemuIo(s.primary.url('v'), `write -P 7 ${REGION + 4 * MiB} 1M`);
    await qemuIo(s.primary.url('v'), `write -P 8 ${2 * REGION} 1M`);
    await s.primary.kill('SIGKILL');
    s.primary = await startAppliance({ dataDir: aDir, volumes: [], args: retain });
    const due = JSON.parse(readFileSync(path.join(aDir, 'state', 'repair-due.json'), 'utf8')) as { ranges: unknown };
    assert.deepEqual(due.ranges, [{ volume: 'v', offsetBytes: REGION, lengthBytes: 2 * REGION }]);
    await s.primary.stop();
    // Replicating again: the replica resumes from its point, and the repair covers region 1.
    s.primary = await startPrimary(aDir, [], replPort, retain);
    const v = await repairRun(s.primary, 60_000);
    assert.equal(v.state, 'done');
    assert.equal(v.totalBytes, 2 * REGION);
    assert.equal(v.mismatchedChunks, 1, 'the lost write reached the replica only through the repair');
    assert.equal(v.repairedChunks, 1);
    await waitCaughtUp(s.primary, s.replica);
    await assertSameVolume(s.primary, s.replica, 'v', dir);
  });
});
