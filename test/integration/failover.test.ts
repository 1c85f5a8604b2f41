/**
 * Issue 5 acceptance 2: failover and failback. The primary takes writes the replica never gets
 * (the link is down, its shipping paused as an operator may have left it), then dies; the
 * replica is promoted (time to writable printed) and takes writes; the old primary comes back
 * (still paused), is demoted (the pause dropped), keeps its split-off writes aside for
 * `offsite replay`, and converges on the new primary receiving only the differing chunks.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { FaultProxy } from '../helpers/fault-proxy';
import { freePort, readVolume, startPrimary, startReplica, testLinkKey, waitCaughtUp } from '../helpers/replication';

const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;

function differingChunks(a: Buffer, b: Buffer): number {
  let n = 0;
  for (let off = 0; off < a.length; off += CHUNK) if (!a.subarray(off, off + CHUNK).equals(b.subarray(off, off + CHUNK))) n++;
  return n;
}

test('failover: promote the replica, fail back by demoting the old primary; only differing chunks travel; split-off writes kept', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  const aListen = await freePort();
  const proxy = new FaultProxy('127.0.0.1', replPort, 9);
  const proxyPort = await proxy.listen();
  const b = await startReplica(bDir, replPort);
  let a = await startPrimary(aDir, [`fo:${32 * MiB}`], proxyPort);
  try {
    const img = path.join(dir, 'random.img');
    writeFileSync(img, randomBytes(8 * MiB));
    let r = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, a.url('fo')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(a, b);
    // An operator's promote while the primary is still connected is refused: it would leave two
    // writable sites. Nothing changes.
    const refused = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /the primary \(site [0-9a-f-]+\) is connected to this replica right now, last heard \d+ ms ago: promoting would leave two sites accepting writes.*--force promotes anyway \[PRIMARY_CONNECTED\]/);
    assert.equal((await b.status()).role, 'replica');
    await waitCaughtUp(a, b);

    // The operator had paused shipping (kept across restarts) when the site was lost.
    const pz = await run(process.execPath, [CLI, 'pause', '--http', `127.0.0.1:${a.httpPort}`, '--reason', 'before the loss']);
    assert.equal(pz.code, 0, pz.stdout + pz.stderr);
    // The link goes down; the primary keeps acknowledging writes the replica never sees.
    proxy.refuse(true);
    proxy.cut();
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xa1 1M 256k', '-c', 'write -P 0xa2 20M 64k', '-c', 'write -P 0xa3 30M 4k', a.url('fo')]);
    assert.equal(r.code, 0, r.stderr);
    const aFinal = await readVolume(a, 'fo', path.join(dir, 'a-final.img'));
    await a.kill('SIGKILL');

    // Promote the replica; measure until a write through its iSCSI target succeeds.
    const t0 = Date.now();
    const p = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`, '--replicate-to', `127.0.0.1:${aListen}`]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /promoted in \d+ ms: writable at sequence \d+/);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xb1 2M 128k', b.url('fo')]);
    const toWritable = (Date.now() - t0) / 1000;
    assert.equal(r.code, 0, r.stderr);
    process.stdout.write(`# promotion to writable: ${toWritable.toFixed(2)} s (target < 5 s)\n`);
    const st = await b.status();
    assert.equal(st.role, 'primary');
    assert.equal((st.volumes as { readOnly: boolean }[])[0].readOnly, false);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xb2 25M 64k', '-c', 'write -P 0xb3 1M 64k', b.url('fo')]);
    assert.equal(r.code, 0, r.stderr);
    // Refused: a second promote of what is now a primary.
    const again = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /already a primary/);

    // The old primary comes back (same flags) and is demoted.
    a = await startAppliance({ dataDir: aDir, volumes: [], args: ['--replicate-to', `127.0.0.1:${proxyPort}`, '--link-key', testLinkKey()] });
    assert.equal(((await a.status()).replication as { paused: { reason: string } | null }).paused?.reason, 'before the loss');
    const bNow = await readVolume(b, 'fo', path.join(dir, 'b-now.img'));
    const expectedChunks = differingChunks(aFinal, bNow);
    assert.ok(expectedChunks >= 5, `${expectedChunks} differing chunks`);
    const d = await run(process.execPath, [CLI, 'demote', '--http', `127.0.0.1:${a.httpPort}`, '--replication-listen', `127.0.0.1:${aListen}`]);
    assert.equal(d.code, 0, d.stderr);
    await waitCaughtUp(b, a, 120_000);
    // A pause belonged to its time as a primary: dropped, so a later promotion ships at once.
    assert.ok(!existsSync(path.join(aDir, 'state', 'pause.json')), 'the pause is dropped on demotion');
    assert.ok(a.logs.some((l) => l.msg === 'replication pause dropped: this site is now a replica'));
    // Its consistent point carries the new primary's time (written after the promotion), not that of its own split-off writes.
    const cp = (await a.status()).consistentPoint as { primaryTime?: string };
    assert.ok(cp.primaryTime && Date.parse(cp.primaryTime) >= t0, `consistent point time ${cp.primaryTime} is before the promotion (${new Date(t0).toISOString()})`);
    const aAfter = await readVolume(a, 'fo', path.join(dir, 'a-after.img'));
    assert.ok(aAfter.equals(bNow), 'the old primary did not converge on the new one');
    const sync = ((await b.status()).replication as { sync: { chunksSent: number; started: number } }).sync;
    assert.equal(sync.started, 1);
    assert.equal(sync.chunksSent, expectedChunks, `sent ${sync.chunksSent} chunks, ${expectedChunks} differ`);
    const status = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /role:\s+primary/);
    assert.match(status.stdout, /replica:\s+127\.0\.0\.1:\d+ connected/);

    // The split-off writes are kept: replay of the saved directory gives the old primary's image.
    await a.stop();
    const split = readdirSync(aDir).filter((f) => f.startsWith('split-'));
    assert.equal(split.length, 1);
    const out = path.join(dir, 'split.img');
    const rp = await run(process.execPath, [CLI, 'replay', '--data', path.join(aDir, split[0]), '--volume', 'fo', '--out', out]);
    assert.equal(rp.code, 0, rp.stderr);
    assert.ok(readFileSync(out).equals(aFinal), 'the saved split-off image differs from what the old primary acknowledged');
    const ins = await run(process.execPath, [CLI, 'journal', 'inspect', '--data', path.join(aDir, split[0]), '--json']);
    assert.equal(ins.code, 0, ins.stderr);
    assert.ok(((JSON.parse(ins.stdout) as { volumes: Record<string, { records: number }> }).volumes.fo?.records ?? 0) >= 3, `the split-off records are listed: ${ins.stdout}`);
  } finally {
    await a.stop();
    await b.stop();
    await proxy.close();
    removeDir(dir);
  }
});
