/**
 * Issue 4 acceptance 1 and 2: a primary and a replica on loopback. Random data through iSCSI
 * reaches the replica byte for byte; the replica refuses writes. Then the link is cut (through
 * the project's fault proxy) and either side is SIGKILLed while a writer lays down a chain of
 * dependent records; a reader polling the replica never finds a record without its
 * predecessor; afterwards the images are equal and no full resync happened.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { FaultProxy, rng } from '../helpers/fault-proxy';
import { assertSameVolume, chainBlock, freePort, metrics, metricValue, pollReplica, startPairBehindProxy, readVolume, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const MiB = 1024 * 1024;
const BLOCK = 4096;

test('the replica equals the primary byte for byte once caught up, and refuses writes', { timeout: 180_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort, ['--journal-retain', '1h']);
  const primary = await startPrimary(path.join(dir, 'a'), ['db:48M', 'logs:16M'], replPort);
  try {
    // Random data, several writers' worth: a whole-image copy plus scattered overwrites.
    const img = path.join(dir, 'random.img');
    writeFileSync(img, randomBytes(24 * MiB));
    let r = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, primary.url('db')]);
    assert.equal(r.code, 0, r.stderr);
    const cmds: string[] = [];
    const rand = rng(7);
    for (let i = 0; i < 200; i++) cmds.push('-c', `write -P ${1 + Math.floor(rand() * 254)} ${Math.floor(rand() * 4096) * BLOCK} ${BLOCK * (1 + Math.floor(rand() * 8))}`);
    r = await run('qemu-io', ['-f', 'raw', ...cmds, primary.url('logs')]);
    assert.equal(r.code, 0, r.stderr);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -z 1M 2M', '-c', 'discard 8M 1M', primary.url('db')]);
    assert.equal(r.code, 0, r.stderr);

    const { headSeq } = await waitCaughtUp(primary, replica);
    assert.ok(headSeq > 200, `headSeq ${headSeq}`);
    // This replica reads binary record tables, so the segments carried them (test/replication/segment.test.ts).
    assert.equal(primary.logs.find((l) => l.msg === 'replication link up')?.segmentTable, true);
    const st = await replica.status();
    assert.equal((st.volumes as { name: string; readOnly: boolean }[]).every((v) => v.readOnly), true);
    assert.deepEqual((st.volumes as { name: string }[]).map((v) => v.name).sort(), ['db', 'logs']);
    assert.equal((st.consistentPoint as { seq: number }).seq, headSeq);
    await assertSameVolume(primary, replica, 'db', dir);
    await assertSameVolume(primary, replica, 'logs', dir);

    // The replica's target refuses writes (qemu sees the write-protected LUN and will not open it
    // writable; libiscsi's own tool gets DATA PROTECT for a WRITE).
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', replica.url('db')]);
    assert.notEqual(w.code, 0);
    assert.match(w.stderr, /write protected|read-only|Permission/i);
    const ps = await primary.status();
    assert.equal(ps.rpoSeconds, 0);
    assert.equal(ps.backlogBytes, 0);
    assert.ok(((ps.link as { bytesWire: number }).bytesWire) > 0);

    // The replica keeps its own history: offsite replay on its data directory reproduces the
    // latest image and an earlier point (right after the first record: only part of the copy).
    await replica.stop();
    const latest = path.join(dir, 'replayed-logs.img');
    let rp = await run(process.execPath, [CLI, 'replay', '--data', path.join(dir, 'b'), '--volume', 'logs', '--out', latest]);
    assert.equal(rp.code, 0, rp.stderr);
    assert.ok(readFileSync(latest).equals(readFileSync(path.join(dir, 'logs.primary.img'))), 'replay of the replica differs from the primary');
    const early = path.join(dir, 'replayed-db-1.img');
    rp = await run(process.execPath, [CLI, 'replay', '--data', path.join(dir, 'b'), '--volume', 'db', '--out', early, '--seq', '1']);
    assert.equal(rp.code, 0, rp.stderr);
    const earlyImg = readFileSync(early);
    const dbPrimary = readFileSync(path.join(dir, 'db.primary.img'));
    assert.ok(!earlyImg.equals(dbPrimary), 'the image after record 1 must differ from the final one');
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});


function checkChain(img: Buffer, records: number): { top: number; error?: string } {
  let top = 0;
  for (let k = 1; k <= records; k++) {
    const b = img.subarray(k * BLOCK, (k + 1) * BLOCK);
    const present = b.toString('ascii', 0, 5) === 'CHAIN';
    if (!present) continue;
    if (b.readUInt32BE(8) !== k || b.readUInt32BE(12) !== k - 1) return { top, error: `block ${k} is damaged` };
    if (k > 1) {
      const prev = img.subarray((k - 1) * BLOCK, k * BLOCK);
      if (prev.toString('ascii', 0, 5) !== 'CHAIN') return { top, error: `record ${k} is on the replica but its predecessor ${k - 1} is not` };
    }
    top = k;
  }
  return { top };
}

/**
 * Write chain records [from, to) through qemu-io, one write at a time (each acknowledged before
 * the next is issued). Resolves with the highest acknowledged record when qemu-io ends.
 */
function chainWriter(url: string, files: string, from: number, to: number): { done: Promise<number>; kill(): void } {
  const args = ['-oL', 'qemu-io', '-f', 'raw'];
  for (let k = from; k < to; k++) args.push('-c', `write -s ${path.join(files, `${k}.blk`)} ${k * BLOCK} ${BLOCK}`);
  args.push(url);
  const p = spawn('stdbuf', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<number>((resolve) =>
    p.on('close', () => {
      const n = (out.match(/wrote 4096\/4096 bytes/g) ?? []).length;
      resolve(from + n - 1);
    }),
  );
  return { done, kill: () => p.kill('SIGKILL') };
}

test('link cuts and SIGKILL of either side: the replica stays a prefix, converges, and never fully resyncs', { timeout: 400_000 }, async () => {
  const seed = Number(process.env.OFFSITE_FAULT_SEED ?? Date.now() % 100000);
  const rand = rng(seed);
  const dir = tempDir();
  const files = path.join(dir, 'chain');
  mkdirSync(files);
  const RECORDS = 3000;
  for (let k = 1; k <= RECORDS; k++) writeFileSync(path.join(files, `${k}.blk`), chainBlock(k));
  const pair = await startPairBehindProxy(dir, [`chain:${16 * MiB}`], seed);
  const { proxy, proxyPort, replPort, aDir, bDir } = pair;
  let replica: RunningAppliance | undefined = pair.replica;
  let primary: RunningAppliance | undefined = pair.primary;
  const primaries: RunningAppliance[] = [primary];
  const faults: string[] = [];
  let readerError: string | undefined;
  let maxSeenOnReplica = 0;
  // The reader: polls the replica's volume through its iSCSI target while everything happens.
  const reader = pollReplica(() => replica, 'chain', 16 * MiB, dir, (img) => {
    const c = checkChain(img, RECORDS);
    if (c.error && !readerError) readerError = `seed ${seed}: ${c.error}`;
    maxSeenOnReplica = Math.max(maxSeenOnReplica, c.top);
  });
  try {
    let next = 1;
    let acked = 0;
    const round = async (fault: () => Promise<void>) => {
      const batch = Math.min(RECORDS + 1, next + 250 + Math.floor(rand() * 250));
      const w = chainWriter(primary!.url('chain'), files, next, batch);
      await new Promise((res) => setTimeout(res, 200 + rand() * 600));
      await fault();
      const killer = setTimeout(() => w.kill(), 1500);
      const top = await w.done;
      clearTimeout(killer);
      if (top >= next) acked = Math.max(acked, top);
      next = acked + 1;
    };
    const kinds = ['cut', 'cut', 'killReplica', 'killPrimary', 'stall', 'cut'];
    for (let i = 0; i < kinds.length && next <= RECORDS; i++) {
      const kind = kinds[i];
      faults.push(kind);
      await round(async () => {
        if (kind === 'cut') proxy.cut();
        if (kind === 'stall') {
          proxy.stall(true);
          await new Promise((res) => setTimeout(res, 1500));
          proxy.stall(false);
        }
        if (kind === 'killReplica') {
          const r = replica!;
          replica = undefined;
          await r.kill('SIGKILL');
          await new Promise((res) => setTimeout(res, 300));
          replica = await startReplica(bDir, replPort);
        }
        if (kind === 'killPrimary') {
          await primary!.kill('SIGKILL');
          primary = await startPrimary(aDir, [], proxyPort);
          primaries.push(primary);
        }
      });
    }
    // Finish the chain without faults.
    if (next <= RECORDS) await round(async () => undefined);
    assert.ok(acked > 300, `seed ${seed}: only ${acked} chain records were acknowledged`);
    await waitCaughtUp(primary, replica!, 90_000);
    await reader.stop();
    assert.equal(readerError, undefined);
    assert.ok(reader.reads() >= 3, `the reader read the replica only ${reader.reads()} times`);
    // Everything acknowledged is on the primary and the replica, and the images are equal.
    const finalImg = await readVolume(replica!, 'chain', path.join(dir, 'final.img'));
    const c = checkChain(finalImg, RECORDS);
    assert.equal(c.error, undefined);
    assert.ok(c.top >= acked, `seed ${seed}: replica holds records up to ${c.top}, ${acked} were acknowledged`);
    await assertSameVolume(primary, replica!, 'chain', dir);
    // No full resync: the shipper always resumed from the replica's durable sequence.
    const m = await metrics(primary);
    assert.equal(metricValue(m, 'offsite_sync_started_total'), 0);
    for (const p of primaries) assert.equal(p.logs.filter((l) => l.msg === 'sync start').length, 0, 'a primary started a full sync');
    assert.ok((metricValue(m, 'offsite_replication_connects_total') ?? 0) >= 1);
    const ps = await primary.status();
    assert.equal((ps.replication as { sync: { started: number } }).sync.started, 0);
    assert.ok(proxy.stats.cuts >= 1);
  } finally {
    await reader.stop();
    await primary?.stop();
    await replica?.stop();
    await proxy.close();
    removeDir(dir);
  }
});
