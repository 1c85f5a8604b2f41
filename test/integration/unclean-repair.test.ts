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
import { existsSync, writeFileSync } from 'node:fs';
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

async function qemuIo(url: string, cmd: string): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', '-c', cmd, url]);
  assert.equal(r.code, 0, r.stderr);
}

test('after an unclean stop the primary repairs the replica where its image holds a write the journal lost', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort);
  let primary = await startPrimary(aDir, ['v:16M'], replPort);
  try {
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 3 0 1M', primary.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);
    await primary.kill('SIGKILL');
    // The power went: this block reached the image, its record never reached the journal.
    damageVolumeFile(aDir, 'v', 5 << 20, Buffer.alloc(4096, 0x5a));
    primary = await startPrimary(aDir, [], replPort);
    assert.ok(existsSync(path.join(aDir, 'state', 'repair-due.json')), 'the repair is recorded as due');
    const v = await repairRun(primary, 60_000);
    assert.equal(v.state, 'done');
    assert.equal(v.repair, true);
    assert.equal(v.mismatchedChunks, 1);
    assert.equal(v.repairedChunks, 1);
    const st = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(st.stdout, /^verify: .*\(repair after an unclean stop\)$/m);
    await until('the repair to be recorded as done', async () => !existsSync(path.join(aDir, 'state', 'repair-due.json')), 10_000, 100);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'v', dir);
    // A clean restart: nothing is due.
    await primary.stop();
    primary = await startPrimary(aDir, [], replPort);
    await waitCaughtUp(primary, replica);
    assert.ok(!primary.logs.some((l) => String(l.msg).startsWith('repair run after an unclean stop')));
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('the repair after an unclean stop covers only the regions being written then (write-intent maps)', { timeout: 180_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const replPort = await freePort();
  let replica = await startReplica(path.join(dir, 'b'), replPort);
  let primary = await startPrimary(aDir, ['v:512M'], replPort);
  try {
    // Region 2, written with FUA: the checkpoint that follows unmarks it.
    await qemuIo(primary.url('v'), `write -f -P 1 ${2 * REGION} 1M`);
    await until('the checkpoint to unmark region 2', async () => JSON.stringify(await marked(aDir, 'v')) === JSON.stringify({ ranges: [] }), 60_000, 200);
    // Regions 0 and 6, written and not checkpointed when the power goes.
    await qemuIo(primary.url('v'), 'write -P 2 0 1M');
    await qemuIo(primary.url('v'), `write -P 3 ${6 * REGION + 8 * MiB} 1M`);
    assert.deepEqual(await marked(aDir, 'v'), { ranges: [{ offsetBytes: 0, lengthBytes: REGION }, { offsetBytes: 6 * REGION, lengthBytes: REGION }] });
    const vols = (await primary.status()).volumes as { name: string; writeIntentBytes: number }[];
    assert.equal(vols.find((x) => x.name === 'v')?.writeIntentBytes, 2 * REGION);
    assert.equal(metricValue(await metrics(primary), 'offsite_volume_write_intent_bytes', 'volume="v"'), 2 * REGION);
    await waitCaughtUp(primary, replica);
    await primary.kill('SIGKILL');
    // Blocks of the marked regions reached the image, their records never reached the journal.
    damageVolumeFile(aDir, 'v', 3 * MiB, Buffer.alloc(4096, 0x5a));
    damageVolumeFile(aDir, 'v', 6 * REGION + 20 * MiB, Buffer.alloc(4096, 0x6b));
    // The replica away: the repair waits for it, and says so.
    await replica.stop();
    primary = await startPrimary(aDir, [], replPort);
    const due = ((await primary.status()).replication as { repairDue: unknown }).repairDue;
    assert.deepEqual(due, { since: (due as { since: string }).since, running: false, ranges: 2, bytes: 2 * REGION });
    const st = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(st.stdout, /^repair: +due since \S+ \(unclean stop\): 128\.0 MiB in 2 ranges being written then to compare with the replica/m);
    replica = await startReplica(path.join(dir, 'b'), replPort);
    const v = await repairRun(primary, 90_000);
    assert.equal(v.state, 'done');
    assert.equal(v.totalBytes, 2 * REGION, 'two regions of eight compared');
    assert.equal(v.checkedBytes, 2 * REGION);
    assert.equal(v.mismatchedChunks, 2);
    assert.equal(v.repairedChunks, 2);
    assert.deepEqual(await marked(aDir, 'v'), { ranges: [] }, 'the map starts clear once the repair due holds what it had');
    await until('the repair to be no longer due', async () => ((await primary.status()).replication as { repairDue: unknown }).repairDue === null, 10_000, 100);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'v', dir);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('an unclean stop with no region being written leaves no repair due; a map that cannot be read means the whole volume', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort);
  let primary = await startPrimary(aDir, ['v:128M'], replPort);
  try {
    await qemuIo(primary.url('v'), 'write -f -P 4 0 1M');
    await until('the checkpoint to unmark region 0', async () => JSON.stringify(await marked(aDir, 'v')) === JSON.stringify({ ranges: [] }), 60_000, 200);
    await waitCaughtUp(primary, replica);
    await primary.kill('SIGKILL');
    primary = await startPrimary(aDir, [], replPort);
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('unclean stop: the write-intent maps show no region being written')), 'said why nothing is due');
    assert.ok(!existsSync(path.join(aDir, 'state', 'repair-due.json')), 'no repair due');
    await waitCaughtUp(primary, replica);
    assert.equal(((await primary.status()).verify as Verify | undefined)?.trigger === 'unclean-stop', false);
    // The map replaced by something else: the whole volume is repaired.
    await primary.kill('SIGKILL');
    writeFileSync(path.join(aDir, 'state', 'v', 'write-intent.map'), 'garbage');
    primary = await startPrimary(aDir, [], replPort);
    assert.ok(primary.logs.some((l) => l.msg === 'write-intent map unusable after the unclean stop: the repair covers the whole volume' && l.volume === 'v'));
    const v = await repairRun(primary, 60_000);
    assert.equal(v.state, 'done');
    assert.equal(v.totalBytes, 128 * MiB);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('an unclean stop while not replicating keeps the repair due until the primary replicates again', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort);
  // With a history window the records stay, so the replica resumes from its point (no resync
  // that would copy the image anyway): only the repair brings it the lost write.
  const retain = ['--journal-retain', '1h'];
  let primary = await startPrimary(aDir, ['v:256M'], replPort, retain);
  try {
    await qemuIo(primary.url('v'), 'write -P 5 0 1M');
    await waitCaughtUp(primary, replica);
    await primary.stop();
    // Started without --replicate-to for a while, and stopped uncleanly there.
    primary = await startAppliance({ dataDir: aDir, volumes: [], args: retain });
    await qemuIo(primary.url('v'), `write -P 6 ${REGION} 1M`);
    await primary.kill('SIGKILL');
    damageVolumeFile(aDir, 'v', REGION + 2 * MiB, Buffer.alloc(4096, 0x7c));
    primary = await startAppliance({ dataDir: aDir, volumes: [], args: retain });
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('a repair after an unclean stop is due: it runs once this primary replicates again')));
    await primary.stop();
    // Replicating again: the replica resumes from its point, and the repair covers region 1.
    primary = await startPrimary(aDir, [], replPort, retain);
    const v = await repairRun(primary, 60_000);
    assert.equal(v.state, 'done');
    assert.equal(v.totalBytes, REGION);
    assert.equal(v.mismatchedChunks, 1, 'the lost write reached the replica only through the repair');
    assert.equal(v.repairedChunks, 1);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'v', dir);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
