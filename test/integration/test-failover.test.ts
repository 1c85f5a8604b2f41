/**
 * Issue 5 acceptance 4: `offsite test-failover` on the replica serves a writable, throw-away
 * copy of each volume while replication continues. Writes to the copy never reach the replica
 * volume; the copy keeps showing the replica as it was when the test started; ending the test
 * discards the copy.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir, TARGET_PREFIX } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const io = async (url: string, ...cmds: string[]) => {
  // The replica's own targets are write-protected: qemu opens them read-only.
  const ro = !url.includes('-test/') && cmds.every((c) => c.startsWith('read')) ? ['-r'] : [];
  const r = await run('qemu-io', [...ro, '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), url]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error/i, `${cmds.join('; ')}: ${r.stdout}`);
  return r;
};

test('test failover: a writable copy on the replica, isolated from the replica volume, while replication continues', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort);
  const primary = await startPrimary(path.join(dir, 'a'), ['app:16M'], replPort);
  try {
    await io(primary.url('app'), 'write -P 0x11 0 1M', 'write -P 0x12 4M 1M');
    await waitCaughtUp(primary, replica);
    const start = await run(process.execPath, [CLI, 'test-failover', '--http', `127.0.0.1:${replica.httpPort}`]);
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, new RegExp(`${TARGET_PREFIX}:app-test`));
    const copy = replica.url('app-test');
    // The copy is writable and starts as the replica was.
    await io(copy, 'read -P 0x11 0 1M', 'read -P 0x12 4M 1M', 'write -P 0x77 0 64k', 'write -P 0x78 8M 1M');
    // Replication continues: new primary writes reach the replica volume ...
    await io(primary.url('app'), 'write -P 0x21 4M 1M', 'write -P 0x22 12M 1M');
    await waitCaughtUp(primary, replica);
    await io(replica.url('app'), 'read -P 0x11 0 1M', 'read -P 0x21 4M 1M', 'read -P 0x22 12M 1M', 'read -P 0 8M 1M');
    // ... and the copy keeps its own view: its writes, and the replica as of the start.
    await io(copy, 'read -P 0x77 0 64k', 'read -P 0x11 64k 960k', 'read -P 0x12 4M 1M', 'read -P 0x78 8M 1M', 'read -P 0 12M 1M');
    await assertSameVolume(primary, replica, 'app', dir);
    // Ending the test discards the copy; its target is gone.
    const stop = await run(process.execPath, [CLI, 'test-failover', '--http', `127.0.0.1:${replica.httpPort}`, '--stop']);
    assert.equal(stop.code, 0, stop.stderr);
    const gone = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', copy]);
    assert.notEqual(gone.code, 0, 'the test copy is still served after --stop');
    const st = await replica.status();
    assert.deepEqual((st.volumes as { name: string }[]).map((v) => v.name), ['app']);
    // Not on a primary.
    const refused = await run(process.execPath, [CLI, 'test-failover', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /runs on a replica/);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
