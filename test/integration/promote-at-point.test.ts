/**
 * Promotion at an earlier point (offsite promote --seq | --time): a bad write (ransomware, a
 * botched upgrade) reached the replica before the primary was lost. The replica is promoted at
 * the last good point of its retained history: every volume goes back to that point together,
 * what came after is saved aside, a crash in the middle of going back leaves the replica as it
 * was, and the old primary still fails back by demotion onto the new history.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, readVolume, startPrimary, startReplica, testLinkKey, waitCaughtUp } from '../helpers/replication';

const io = async (url: string, ...cmds: string[]) => {
  const ro = cmds.every((c) => c.startsWith('read')) ? ['-r'] : [];
  const r = await run('qemu-io', [...ro, '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), url]);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error/i, `${cmds.join('; ')}: ${r.stdout}`);
};

const promote = (site: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${site.httpPort}`, ...args]);

/** Stop the replica, start it with a failpoint, promote at `seq` (the failpoint kills it), and start it again as it was configured. */
async function promotionCutShort(b: RunningAppliance, bDir: string, replPort: number, retain: string[], failpoint: string, seq: number): Promise<RunningAppliance> {
  await b.stop();
  const cutting = await startReplica(bDir, replPort, retain, { OFFSITE_FAILPOINT: failpoint });
  const cut = await promote(cutting, '--seq', String(seq));
  assert.notEqual(cut.code, 0, 'the failpoint did not stop the promotion');
  await new Promise<void>((resolve) => (cutting.proc.exitCode !== null || cutting.proc.signalCode !== null ? resolve() : cutting.proc.once('exit', () => resolve())));
  return startReplica(bDir, replPort, retain);
}

test('promote at an earlier point: every volume goes back together, later writes saved aside, crash-safe, and the old primary fails back onto it', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  const aListen = await freePort();
  const retain = ['--journal-retain', '1h'];
  let b = await startReplica(bDir, replPort, retain);
  let a: RunningAppliance | undefined = await startPrimary(aDir, ['app:16M', 'log:4M'], replPort);
  try {
    // The good state, then the bad writes, all replicated.
    await io(a.url('app'), 'write -P 0x11 0 2M', 'write -P 0x12 4M 1M', 'write -P 0x13 8M 1M');
    await io(a.url('log'), 'write -P 0x41 0 64k');
    const { headSeq: good } = await waitCaughtUp(a, b);
    await new Promise((r) => setTimeout(r, 20));
    const goodTime = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 20));
    await io(a.url('app'), 'write -P 0xee 0 1M', 'write -P 0xee 4M 512k', 'write -P 0xee 8M 1M', 'write -P 0xee 12M 1M');
    await io(a.url('log'), 'write -P 0xef 0 64k');
    const { headSeq: bad } = await waitCaughtUp(a, b);
    const badApp = await readVolume(b, 'app', path.join(dir, 'bad-app.img'));
    await a.kill('SIGKILL');
    a = undefined;

    // A crash half way back: the replica comes up as it was (the bad state, still a replica).
    b = await promotionCutShort(b, bDir, replPort, retain, 'promote-rewind-midway', good);
    assert.ok(b.logs.some((l) => String(l.msg).startsWith('a promotion at an earlier point was cut short: the volumes are brought forward again')), 'no log line about the interrupted promotion');
    const st0 = await b.status();
    assert.equal(st0.role, 'replica');
    assert.equal(st0.appliedSeq, bad);
    assert.ok((await readVolume(b, 'app', path.join(dir, 'after-crash.img'))).equals(badApp), 'after the crash the replica does not hold its last point');

    // Refusals change nothing: outside the window, usage.
    let r = await promote(b, '--seq', String(bad + 100), '--force');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /outside the retained window/);
    r = await promote(b, '--seq', '1', '--time', goodTime);
    assert.match(r.stderr, /mutually exclusive/);
    assert.equal((await b.status()).role, 'replica');

    // Promote at the good point, by time.
    r = await promote(b, '--time', goodTime, '--replicate-to', `127.0.0.1:${aListen}`);
    assert.equal(r.code, 0, r.stderr);
    const m = /writable at sequence (\d+) \(primary time [^)]+\); went back from sequence (\d+) \((\d+) blocks rewritten\): the later writes are saved aside in (\S+)/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.equal(Number(m[1]), good);
    assert.equal(Number(m[2]), bad);
    assert.ok(Number(m[3]) > 0);
    const st = await b.status();
    assert.equal(st.role, 'primary');
    await io(b.url('app'), 'read -P 0x11 0 2M', 'read -P 0x12 4M 1M', 'read -P 0x13 8M 1M', 'read -P 0 12M 1M');
    await io(b.url('log'), 'read -P 0x41 0 64k');
    // Writable, and its history starts at the point.
    await io(b.url('app'), 'write -P 0x21 14M 64k');
    assert.equal(((await b.status()).journal as { window: { fromSeq: number } }).window.fromSeq, good);
    // The bad writes are kept aside: replay of the saved directory gives the volume as it was.
    const saved = readdirSync(bDir).filter((f) => f.startsWith('split-'));
    assert.equal(saved.length, 2, `one saved directory per attempt: ${saved.join(', ')}`);
    const out = path.join(dir, 'aside.img');
    const rp = await run(process.execPath, [CLI, 'replay', '--data', m[4], '--volume', 'app', '--out', out]);
    assert.equal(rp.code, 0, rp.stderr);
    assert.ok(readFileSync(out).equals(badApp), 'the saved image is not the state the replica went back from');

    // A restart keeps it all.
    await b.stop();
    b = await startAppliance({ dataDir: bDir, volumes: [], args: [...retain, '--replicate-to', `127.0.0.1:${aListen}`, '--link-key', testLinkKey()] });
    assert.equal((await b.status()).role, 'primary');
    await io(b.url('app'), 'read -P 0x11 0 2M', 'read -P 0x21 14M 64k', 'read -P 0 12M 64k');

    // The old primary returns and is demoted: its bad writes are split off, and it converges.
    a = await startAppliance({ dataDir: aDir, volumes: [], args: ['--replicate-to', `127.0.0.1:${replPort}`, '--link-key', testLinkKey()] });
    const d = await run(process.execPath, [CLI, 'demote', '--http', `127.0.0.1:${a.httpPort}`, '--replication-listen', `127.0.0.1:${aListen}`]);
    assert.equal(d.code, 0, d.stderr);
    await waitCaughtUp(b, a, 120_000);
    for (const v of ['app', 'log']) {
      const x = await readVolume(a, v, path.join(dir, `a-${v}.img`));
      const y = await readVolume(b, v, path.join(dir, `b-${v}.img`));
      assert.ok(x.equals(y), `volume ${v}: the old primary did not converge on the new one`);
    }
    assert.equal(readdirSync(aDir).filter((f) => f.startsWith('split-')).length, 1, 'the old primary keeps its split-off writes');
  } finally {
    await a?.stop();
    await b.stop();
    removeDir(dir);
  }
});

test('promote at an earlier point: a refused one leaves the replica receiving; one cut short inside the journal reset is finished at start (the volumes are at the point), forgets the bookmarks past it, and history restarts there', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  const retain = ['--journal-retain', '1h'];
  let b = await startReplica(bDir, replPort, retain);
  let a: RunningAppliance | undefined = await startPrimary(path.join(dir, 'a'), ['app:16M'], replPort);
  const bookmarksOf = async (site: RunningAppliance) => ((await (await fetch(`http://127.0.0.1:${site.httpPort}/bookmarks`)).json()) as { bookmarks: { name: string }[] }).bookmarks.map((x) => x.name);
  try {
    await io(a.url('app'), 'write -P 0x11 0 2M', 'write -P 0x12 4M 1M');
    const { headSeq: good } = await waitCaughtUp(a, b);
    const goodApp = await readVolume(b, 'app', path.join(dir, 'good.img'));
    await io(a.url('app'), 'write -P 0xee 0 1M', 'write -P 0xee 8M 1M');
    let r = await run(process.execPath, [CLI, 'bookmark', '--http', `127.0.0.1:${a.httpPort}`, 'after-bad']);
    assert.equal(r.code, 0, r.stderr);
    await io(a.url('app'), 'write -P 0xef 12M 64k');
    await waitCaughtUp(a, b);
    for (let i = 0; i < 100 && !(await bookmarksOf(b)).includes('after-bad'); i++) await new Promise((res) => setTimeout(res, 100));
    assert.ok((await bookmarksOf(b)).includes('after-bad'));

    // Refused (outside the window) while the primary runs: the replica goes on receiving.
    r = await promote(b, '--seq', '100000', '--force');
    assert.match(r.stderr, /outside the retained window/);
    await io(a.url('app'), 'write -P 0x33 2M 64k');
    const { headSeq: bad } = await waitCaughtUp(a, b);
    const badApp = await readVolume(b, 'app', path.join(dir, 'bad.img'));
    assert.ok(!badApp.equals(goodApp));
    await a.kill('SIGKILL');
    a = undefined;

    // Killed inside the journal's reset, after the volumes went back whole.
    b = await promotionCutShort(b, bDir, replPort, retain, 'journal-reset-midway', good);
    assert.ok(b.logs.some((l) => String(l.msg).startsWith('a promotion at an earlier point was cut short after the volumes went back')), 'no log line about the interrupted promotion');
    const st = await b.status();
    assert.deepEqual([st.role, st.appliedSeq], ['replica', good], `it holds the point it went back to (went back from ${bad})`);
    assert.ok((await readVolume(b, 'app', path.join(dir, 'after.img'))).equals(goodApp), 'the volume is not the state at the point');
    assert.deepEqual(await bookmarksOf(b), [], 'a bookmark past the point survived');
    // Its history restarts at the point (the rebase the crash prevented).
    for (let i = 0; i < 100 && ((await b.status()).journal as { window: { fromSeq: number } }).window.fromSeq !== good; i++) await new Promise((res) => setTimeout(res, 100));
    assert.equal(((await b.status()).journal as { window: { fromSeq: number } }).window.fromSeq, good);
    r = await promote(b);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`writable at sequence ${good}\\b`));
    await io(b.url('app'), 'read -P 0x11 0 2M', 'write -P 0x21 14M 64k');
    assert.deepEqual(await bookmarksOf(b), []);
  } finally {
    await a?.stop();
    await b.stop();
    removeDir(dir);
  }
});
