/**
 * Issue 4 acceptance 3: a primary that already holds data and a new, empty replica — the image
 * sync runs while writes go on, is interrupted (link cut) and resumes where it stopped; and a
 * replica seeded from a carried image receives only the chunks that differ.
 */
import assert from 'node:assert/strict';
import { copyFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import test from 'node:test';
import type { PrimaryReplicationStatus } from '../../src/appliance/replication';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { FaultProxy } from '../helpers/fault-proxy';
import { assertSameVolume, freePort, metrics, metricValue, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

type SyncStatus = PrimaryReplicationStatus['sync'];

test('initial sync of a primary holding data: runs during writes, resumes after a cut where it stopped', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  try {
    // The primary has been running alone for a while: 40 MiB of data, journal long trimmed.
    let primary = await startAppliance({ dataDir: aDir, volumes: [`big:${64 * MiB}`] });
    const img = path.join(dir, 'random.img');
    writeFileSync(img, randomBytes(40 * MiB));
    let r = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, primary.url('big')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await primary.stop(), 0);

    const replPort = await freePort();
    const proxy = new FaultProxy('127.0.0.1', replPort, 3);
    const proxyPort = await proxy.listen();
    proxy.setRate(6 * MiB); // a slow link, so the sync is still running when we cut it
    const replica = await startReplica(path.join(dir, 'b'), replPort);
    primary = await startPrimary(aDir, [], proxyPort);
    try {
      await until('the sync to be halfway', async () => {
        const s = (await primary.status()).replication as { sync: SyncStatus };
        return s.sync.running && s.sync.remainingBytes < s.sync.totalBytes * 0.6 ? true : undefined;
      });
      const halfway = Date.now();
      const rs = await replica.status();
      assert.equal(rs.state, 'syncing', 'a replica in the middle of a sync is not consistent');
      assert.equal(rs.consistentPoint, null);
      // New writes keep flowing during the sync; they land through the journal.
      await new Promise((res) => setTimeout(res, 1500));
      r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 1M 1M', '-c', 'write -P 0x78 50M 2M', primary.url('big')]);
      assert.equal(r.code, 0, r.stderr);
      // The replica has no consistent point yet: the RPO counts from no later than the sync's
      // start, not from the writes just made (the shipper's point is already the sync's).
      const during = Number((await primary.status()).rpoSeconds);
      const floor = (Date.now() - halfway) / 1000 - 0.3;
      assert.ok(during >= floor, `RPO ${during} s during the sync, which began more than ${floor.toFixed(1)} s ago`);
      proxy.cut();
      proxy.setRate(0);
      await waitCaughtUp(primary, replica, 120_000);
      const s = ((await primary.status()).replication as { sync: SyncStatus }).sync;
      assert.equal(s.started, 1, 'one full sync');
      assert.ok(s.resumed >= 1, 'the interrupted sync resumed');
      assert.equal(s.completed, 1);
      const starts = primary.logs.filter((l) => l.msg === 'sync start');
      assert.equal(starts[0].resumed, false);
      const resumed = starts.find((l) => l.resumed === true);
      assert.ok(resumed, 'a resumed sync start was logged');
      assert.ok((resumed.bytesToScan as number) < (starts[0].bytesToScan as number), `the resumed sync scanned ${String(resumed.bytesToScan)} bytes, not less than the whole ${String(starts[0].bytesToScan)}`);
      // Only non-zero chunks went over (the replica was fresh): about 40 MiB + the new writes, not 64.
      assert.ok(s.chunksSent <= (44 * MiB) / CHUNK + 128, `${s.chunksSent} chunks sent`);
      assert.equal((await replica.status()).state, 'consistent');
      await assertSameVolume(primary, replica, 'big', dir);
      const m = await metrics(primary);
      assert.equal(metricValue(m, 'offsite_sync_started_total'), 1);
      assert.equal(metricValue(m, 'offsite_sync_remaining_bytes'), 0);
    } finally {
      await primary.stop();
      await replica.stop();
      await proxy.close();
    }
  } finally {
    removeDir(dir);
  }
});

test('seeding from a carried image: the sync sends only the chunks that differ', { timeout: 180_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  try {
    let primary = await startAppliance({ dataDir: aDir, volumes: [`vol:${32 * MiB}`] });
    const img = path.join(dir, 'random.img');
    writeFileSync(img, randomBytes(12 * MiB));
    let r = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await primary.stop(), 0);
    // The courier's copy, taken while the primary was stopped.
    const carried = path.join(dir, 'carried.img');
    copyFileSync(path.join(aDir, 'volumes', 'vol.img'), carried);
    // Meanwhile the primary moved on: 10 chunks changed (one inside the data, some in empty space).
    primary = await startAppliance({ dataDir: aDir, volumes: [] });
    const changed = [1, 2, 3, 5, 8, 13, 21, 29, 30, 31].map((mib) => mib * MiB + 8192);
    r = await run('qemu-io', ['-f', 'raw', ...changed.flatMap((off) => ['-c', `write -P 0x5c ${off} 4k`]), primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await primary.stop(), 0);

    const seed = await run(process.execPath, [CLI, 'seed', '--data', bDir, '--volume', 'vol', '--from', carried]);
    assert.equal(seed.code, 0, seed.stderr);
    assert.match(seed.stdout, /seeded volume vol/);
    const bad = await run(process.execPath, [CLI, 'seed', '--data', bDir, '--volume', 'vol', '--from', path.join(dir, 'missing.img')]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /cannot read the image/);

    const replPort = await freePort();
    const replica = await startReplica(bDir, replPort);
    primary = await startPrimary(aDir, [], replPort);
    try {
      await waitCaughtUp(primary, replica, 120_000);
      const s = ((await primary.status()).replication as { sync: SyncStatus }).sync;
      assert.equal(s.completed, 1);
      assert.equal(s.chunksSent, changed.length, `sent ${s.chunksSent} chunks; ${changed.length} differ`);
      assert.equal(s.chunksSkipped, (32 * MiB) / CHUNK - changed.length);
      const m = await metrics(primary);
      assert.equal(metricValue(m, 'offsite_sync_chunks_sent_total'), changed.length);
      await assertSameVolume(primary, replica, 'vol', dir);
    } finally {
      await primary.stop();
      await replica.stop();
    }
  } finally {
    removeDir(dir);
  }
});
