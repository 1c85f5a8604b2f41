/**
 * Issue 6: disk full on either side. The primary's data directory sits on a small tmpfs that fills
 * up during writes: writes then fail with DATA PROTECT / SPACE ALLOCATION FAILED (never a crash,
 * never a corrupted journal), what was acknowledged stays readable, and writes succeed again once
 * space returns; replay of the latest sequence still equals the served image. A replica whose
 * disk fills pauses (the primary keeps its backlog and keeps taking writes), keeps serving its
 * consistent prefix, and catches up — without a full resync — when space returns.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, smallDisk, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, freePort, metrics, metricValue, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const MiB = 1024 * 1024;

test('disk full on the primary: writes fail with the right sense, nothing is lost or corrupted, writes resume when space returns', { timeout: 180_000 }, async (t) => {
  const disk = smallDisk(t, '40m');
  if (!disk) return;
  const { dir, mnt } = disk;
  const filler = path.join(mnt, 'filler');
  writeFileSync(filler, Buffer.alloc(8 * MiB, 1));
  const data = path.join(mnt, 'data');
  const app = await startAppliance({ dataDir: data, volumes: [`full:${64 * MiB}`] });
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', app.url('full')]);
    assert.equal(r.code, 0, r.stderr);
    let failedAt = -1;
    for (let i = 1; i < 60 && failedAt < 0; i++) {
      r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${(i % 200) + 20} ${i * MiB} 1M`, app.url('full')]);
      if (r.code !== 0 || /failed|error/i.test(r.stdout + r.stderr)) failedAt = i;
    }
    assert.ok(failedAt > 0, 'the file system never filled up');
    const m = await (await fetch(`http://127.0.0.1:${app.httpPort}/metrics`)).text();
    assert.match(m, /offsite_scsi_check_conditions_total\{volume="full",sense_key="[^"]*(DATA_PROTECT|7)[^"]*"\} [1-9]/);
    assert.ok(app.logs.some((l) => /no space left|nearly full/i.test(JSON.stringify(l))), `the full disk is logged: ${JSON.stringify(app.logs.filter((l) => Number(l.level) >= 40).slice(0, 5))}`);
    // Still serving; acknowledged data intact.
    assert.equal((await fetch(`http://127.0.0.1:${app.httpPort}/status`)).status, 200);
    r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x11 0 1M', '-c', `read -P ${((failedAt - 1) % 200) + 20} ${(failedAt - 1) * MiB} 1M`, app.url('full')]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    // Space returns: writes are accepted again.
    rmSync(filler);
    let ok = false;
    for (let i = 0; i < 20 && !ok; i++) {
      await new Promise((res) => setTimeout(res, 500));
      r = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x99 ${failedAt * MiB} 1M`, '-c', `read -P 0x99 ${failedAt * MiB} 1M`, app.url('full')]);
      ok = r.code === 0 && !/failed|error|verification/i.test(r.stdout + r.stderr);
    }
    assert.ok(ok, `writes did not resume once space returned: ${r.stdout}${r.stderr}`);
    const served = path.join(dir, 'served.img');
    r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', app.url('full'), served]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await app.stop(), 0);
    const out = path.join(dir, 'replayed.img');
    r = await run(process.execPath, [CLI, 'replay', '--data', data, '--volume', 'full', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(readFileSync(out).equals(readFileSync(served)), 'replay differs from the served image after the disk filled');
  } finally {
    await app.stop();
    execFileSync('umount', ['-l', mnt]);
    removeDir(dir);
  }
});

test('disk full on the replica: it pauses, keeps serving its prefix, the primary keeps writing, and it catches up without a resync when space returns', { timeout: 240_000 }, async (t) => {
  // Room for the replica's journal segment (up to 64 MiB, reused rather than freed) and its volume.
  const disk = smallDisk(t, '128m');
  if (!disk) return;
  const { dir, mnt } = disk;
  const replPort = await freePort();
  const replica = await startReplica(path.join(mnt, 'replica'), replPort);
  const primary = await startPrimary(path.join(dir, 'primary'), [`rf:${32 * MiB}`], replPort);
  const filler = path.join(mnt, 'filler');
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 2M', primary.url('rf')]);
    assert.equal(r.code, 0, r.stderr);
    const before = await waitCaughtUp(primary, replica);
    // Leave about 1 MiB free on the replica's file system.
    const fs = statfsSync(mnt);
    writeFileSync(filler, Buffer.alloc(Math.max(0, fs.bavail * fs.bsize - MiB), 7));
    // The primary is not on that disk: every write of a burst much bigger than the free space succeeds.
    for (let i = 2; i < 26; i++) {
      r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${i + 0x20} ${i * MiB} 1M`, primary.url('rf')]);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stdout + r.stderr, /failed|error/i);
    }
    const full = () => replica.logs.some((l) => /no space|file system full|nearly full/i.test(String(l.msg) + JSON.stringify(l.err ?? '')));
    for (let i = 0; i < 100 && !full(); i++) await new Promise((res) => setTimeout(res, 100));
    assert.ok(full(), `the replica logs its full disk: ${JSON.stringify(replica.logs.filter((l) => Number(l.level) >= 40).slice(-5))}`);
    const p = await primary.status();
    assert.ok((p.ackedSeq as number) < (p.headSeq as number), `the replica cannot have acknowledged everything: ${JSON.stringify(p)}`);
    assert.ok((p.backlogBytes as number) > 0);
    // Still up, still serving what it holds: the first 2 MiB as written before the disk filled.
    assert.equal((await fetch(`http://127.0.0.1:${replica.httpPort}/status`)).status, 200);
    r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x11 0 2M', replica.url('rf')]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    assert.ok(((await replica.status()).appliedSeq as number) >= before.headSeq);
    // Space returns: the replica resumes from where it stopped and converges.
    rmSync(filler);
    await waitCaughtUp(primary, replica, 120_000);
    await assertSameVolume(primary, replica, 'rf', dir);
    const m = await metrics(primary);
    assert.equal(metricValue(m, 'offsite_sync_started_total'), 0, 'the full disk caused no image sync: the replica resumed from its journal');
  } finally {
    await primary.stop();
    await replica.stop();
    execFileSync('umount', ['-l', mnt]);
    removeDir(dir);
  }
});
