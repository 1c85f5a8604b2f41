/**
 * `offsite seed` refuses a primary's data directory (its volume would be overwritten behind its
 * journal), releases its pid lock when it fails, seeds a new replica's directory owner-only,
 * and accepts a replica started before it met its primary.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startReplica } from '../helpers/replication';

const MiB = 1024 * 1024;
const seed = (data: string, volume: string, from: string) => run(process.execPath, [CLI, 'seed', '--data', data, '--volume', volume, '--from', from], { timeoutMs: 60_000 });

test("seed refuses a primary's data directory: nothing overwritten, nothing written into it, no pid lock left behind", async () => {
  const dir = tempDir();
  const data = path.join(dir, 'primary');
  try {
    const app = await startAppliance({ dataDir: data, volumes: ['vol:4M'] });
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7a 0 1M', app.url('vol')]);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(await app.stop(), 0);
    const image = path.join(data, 'volumes', 'vol.img');
    const before = readFileSync(image);
    const carried = path.join(dir, 'carried.img');
    writeFileSync(carried, Buffer.alloc(4 * MiB, 0x33));

    const r = await seed(data, 'vol', carried);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /holds a primary's data .*\[SEED_NOT_REPLICA\]/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.ok(readFileSync(image).equals(before), "the primary's volume is untouched");
    assert.ok(!existsSync(path.join(data, 'state', 'replica.json')), 'no replica state written into a primary');
    assert.ok(!existsSync(path.join(data, 'offsite.pid')), 'the failed seed released its pid lock');

    // The primary starts again as it was.
    const again = await startAppliance({ dataDir: data, volumes: [] });
    const read = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x7a 0 1M', again.url('vol')]);
    assert.equal(read.code, 0, read.stderr);
    assert.doesNotMatch(read.stdout, /Pattern verification failed/);
    assert.equal(await again.stop(), 0);
  } finally {
    removeDir(dir);
  }
});

test('a seed that fails after taking the lock (a replica that already replicates) leaves no pid lock', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'replica');
  try {
    mkdirReplicaState(data, { fresh: false, consistentSeq: 5, appliedTimeMs: 0, appliedSeq: 5 });
    const carried = path.join(dir, 'carried.img');
    writeFileSync(carried, Buffer.alloc(MiB, 0x33));
    const r = await seed(data, 'vol', carried);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /\[SEED_NOT_FRESH\]/);
    assert.ok(!existsSync(path.join(data, 'offsite.pid')), 'the failed seed released its pid lock');
  } finally {
    removeDir(dir);
  }
});

test("seed into a new directory, and into a replica started before it met its primary; the files are owner-only", async () => {
  const dir = tempDir();
  try {
    const carried = path.join(dir, 'carried.img');
    writeFileSync(carried, Buffer.alloc(2 * MiB, 0x44));
    const fresh = path.join(dir, 'new');
    const before = process.umask(0o022);
    let r;
    try {
      r = await seed(fresh, 'vol', carried);
    } finally {
      process.umask(before);
    }
    assert.equal(r.code, 0, r.stderr);
    for (const e of readdirSync(fresh, { withFileTypes: true, recursive: true })) {
      const p = path.join(e.parentPath ?? e.path, e.name);
      assert.equal(statSync(p).mode & 0o077, 0, `${p} is ${(statSync(p).mode & 0o777).toString(8)}`);
    }
    // A replica that ran (journal and all) but never met a primary is still a new replica.
    const started = path.join(dir, 'started');
    const replica = await startReplica(started, await freePort());
    await replica.stop();
    assert.ok(existsSync(path.join(started, 'journal')));
    r = await seed(started, 'vol', carried);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /seeded volume vol/);
  } finally {
    removeDir(dir);
  }
});

/** A replica's data directory as a replica that met its primary leaves it (state/replica.json not fresh). */
function mkdirReplicaState(data: string, state: Record<string, unknown>): void {
  mkdirSync(path.join(data, 'state'), { recursive: true, mode: 0o700 });
  mkdirSync(path.join(data, 'volumes'), { mode: 0o700 });
  writeFileSync(path.join(data, 'offsite.json'), JSON.stringify({ format: 'offsite-data', version: 1, siteId: 'test-site', createdAt: new Date().toISOString() }));
  writeFileSync(path.join(data, 'state', 'replica.json'), JSON.stringify(state));
}
