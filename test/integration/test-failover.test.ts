/**
 * Issue 5 acceptance 4: `offsite test-failover` on the replica serves a writable, throw-away
 * copy of each volume while replication continues. Writes to the copy never reach the replica
 * volume; the copy keeps showing the replica as it was when the test started; ending the test
 * discards the copy. And at an earlier point of the replica's retained history (`--seq`,
 * `--time`): e.g. the last point before a bad write (ransomware, a botched upgrade), found and
 * tried out without stopping replication.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, TARGET_PREFIX } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

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

test('test failover at an earlier point: copies of every volume as they were then, from the base and the retained records, while replication goes on', { timeout: 180_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  // History by size: 3 MiB of records are kept, older ones folded into the base images, so the
  // copies need both.
  const config = path.join(dir, 'replica.yaml');
  writeFileSync(config, 'journal: { retainSize: 3M }\n');
  const replica = await startReplica(path.join(dir, 'b'), replPort, ['--config', config]);
  const primary = await startPrimary(path.join(dir, 'a'), ['app:16M', 'log:4M'], replPort);
  const tf = (...args: string[]) => run(process.execPath, [CLI, 'test-failover', '--http', `127.0.0.1:${replica.httpPort}`, ...args]);
  try {
    // Phase 0, folded into the base later; phase A, the point to go back to; phase B, the "bad" writes.
    await io(primary.url('app'), 'write -P 0x01 0 4M');
    await io(primary.url('app'), 'write -P 0x11 0 1M', 'write -P 0x12 4M 1M');
    await io(primary.url('log'), 'write -P 0x41 0 64k');
    const { headSeq: pointA } = await waitCaughtUp(primary, replica);
    await new Promise((r) => setTimeout(r, 20));
    const timeA = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 20));
    await io(primary.url('app'), 'write -P 0x21 0 512k', 'write -P 0x23 4M 1M', 'write -P 0x22 8M 1M');
    await io(primary.url('log'), 'write -P 0x51 0 64k');
    await waitCaughtUp(primary, replica);
    type Window = { fromSeq: number; toSeq: number };
    const window = async () => ((await replica.status()).journal as { window: Window }).window;
    await until('the replica folds its oldest records into the base', async () => (await window()).fromSeq > 0, 30_000);
    const w = await window();
    assert.ok(w.fromSeq <= pointA, `point ${pointA} is still retained (window ${w.fromSeq}..${w.toSeq})`);

    const expectPointA = async () => {
      await io(replica.url('app-test'), 'read -P 0x11 0 1M', 'read -P 0x01 1M 3M', 'read -P 0x12 4M 1M', 'read -P 0 8M 1M');
      await io(replica.url('log-test'), 'read -P 0x41 0 64k');
    };
    let r = await tf('--seq', String(pointA));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`writable copies \\(as of sequence ${pointA}, [^)]+\\): .*app-test`));
    await expectPointA();
    const st = (await replica.status()).testFailover as { active: boolean; point?: { seq: number } };
    assert.equal(st.active, true);
    assert.equal(st.point?.seq, pointA);
    const text = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${replica.httpPort}`]);
    assert.match(text.stdout, new RegExp(`test: +failover test running, copies as of sequence ${pointA} `));
    // The copies take writes; the replica volumes go on following the primary underneath.
    await io(replica.url('app-test'), 'write -P 0x77 12M 64k');
    await io(primary.url('app'), 'write -P 0x31 0 64k', 'write -P 0x32 4M 64k');
    await waitCaughtUp(primary, replica);
    await io(replica.url('app'), 'read -P 0x31 0 64k', 'read -P 0x21 64k 448k', 'read -P 0x32 4M 64k', 'read -P 0x22 8M 1M');
    await io(replica.url('log'), 'read -P 0x51 0 64k');
    await expectPointA();
    await io(replica.url('app-test'), 'read -P 0x77 12M 64k');
    r = await tf('--stop');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(((await replica.status()).testFailover as { active: boolean }).active, false);

    // The same point by time.
    r = await tf('--time', timeA);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`as of sequence ${pointA},`));
    await expectPointA();
    assert.equal((await tf('--stop')).code, 0);

    // Refusals: outside the window (the phase-0 point was folded), usage errors; nothing left running.
    r = await tf('--seq', '1');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /sequence 1 is outside the retained window: sequences \d+\.\.\d+/);
    r = await tf('--seq', '1', '--time', timeA);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /mutually exclusive/);
    r = await tf('--stop', '--seq', '3');
    assert.notEqual(r.code, 0);
    const api = (body: unknown) => fetch(`http://127.0.0.1:${replica.httpPort}/test-failover`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    for (const body of [{ seq: -1 }, { seq: 1.5 }, { seq: '3' }, { time: 'yesterday' }, { seq: pointA, time: timeA }, { action: 'stop', seq: pointA }]) {
      const res = await api(body);
      assert.equal(res.status, 400, JSON.stringify(body));
    }
    const res = await api({ seq: w.toSeq + 1000 });
    assert.equal(res.status, 409);
    assert.equal(((await res.json()) as { code: string }).code, 'JOURNAL_OUTSIDE_WINDOW');
    assert.equal(((await replica.status()).testFailover as { active: boolean }).active, false);
    const gone = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 4k', replica.url('app-test')]);
    assert.notEqual(gone.code, 0, 'a refused test left a copy served');
    await assertSameVolume(primary, replica, 'app', dir);
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
