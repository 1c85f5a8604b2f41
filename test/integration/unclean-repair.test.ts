/**
 * src/appliance/replication.ts (checkRepairDue) and appliance.ts (repairDue): after an unclean
 * stop a primary's image may hold a write whose journal record was lost (image and journal reach
 * the disk independently); the replica never gets it. The primary's next start runs a repair
 * (an online verify with --repair over every volume) once the replica is there, and keeps it due
 * across restarts until one has finished. Simulated: the primary is killed, and a block of its
 * image file is changed behind the journal's back before it starts again.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, damageVolumeFile, freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

type Verify = { state: string; trigger: string; repair: boolean; repairedChunks: number; mismatchedChunks: number };

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
    await until('the repair run to finish', async () => {
      const v = (await primary.status()).verify as Verify | undefined;
      return v?.trigger === 'unclean-stop' && v.state !== 'running';
    }, 60_000, 200);
    const v = (await primary.status()).verify as Verify;
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
