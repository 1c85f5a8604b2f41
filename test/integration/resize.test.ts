/**
 * Growing a volume online (`offsite resize`, POST /resize): what an operator of a storage
 * appliance expects of a LUN. The primary's volume grows while an initiator stays logged in (it
 * gets CAPACITY DATA HAS CHANGED, then READ CAPACITY reports the new size), data before the old
 * end is kept, writes past it work and reach the replica, whose copy grows with it (read-only
 * target included) before any such write arrives. Never shrinks. A restart keeps the size; the
 * replica follows across its own restart. Real appliances, libiscsi-level PDUs from the
 * project's raw initiator, qemu-io through iSCSI.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, TARGET_PREFIX, removeDir, startAppliance, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { RawInitiator, type ScsiOutcome } from '../helpers/raw-initiator';
import { assertSameVolume, freePort, metricValue, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const MiB = 1 << 20;
const TUR = Buffer.alloc(6);
/** READ CAPACITY (16): SERVICE ACTION IN (16), service action 0x10, allocation length 32. */
const READ_CAPACITY_16 = Buffer.from([0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);

const resize = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'resize', '--http', `127.0.0.1:${a.httpPort}`, ...args], { timeoutMs: 60_000 });
const sizeOf = async (a: RunningAppliance, volume: string) => ((await a.status()).volumes as { name: string; sizeBytes: number }[]).find((v) => v.name === volume)?.sizeBytes;

function capacityBytes(o: ScsiOutcome): number {
  assert.equal(o.status, 0, `READ CAPACITY status ${o.status}`);
  return (Number(o.data.readBigUInt64BE(0)) + 1) * o.data.readUInt32BE(8);
}

/** Sense key, ASC, ASCQ of a CHECK CONDITION (fixed or descriptor format). */
function senseOf(o: ScsiOutcome): [number, number, number] {
  const s = o.sense ?? Buffer.alloc(0);
  if ((s[0] & 0x7f) >= 0x72) return [s[1] & 0x0f, s[2], s[3]];
  return [s[2] & 0x0f, s[12], s[13]];
}

test('resize: a volume grows online on the primary and its replica; a logged-in initiator is told; data kept; never shrinks', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  let replica = await startReplica(path.join(dir, 'b'), replPort);
  // History kept: point-in-time replay must rebuild the grown volume too.
  const history = ['--journal-retain', '1h'];
  let primary = await startPrimary(path.join(dir, 'a'), ['vol:16M', 'other:8M'], replPort, history);
  const sessions: RawInitiator[] = [];
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 15M 1M', primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);
    // Initiators logged in on both sites across the grow.
    const onPrimary = await RawInitiator.session(primary.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:resize-a', targetName: `${TARGET_PREFIX}:vol` });
    const onReplica = await RawInitiator.session(replica.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:resize-b', targetName: `${TARGET_PREFIX}:vol` });
    sessions.push(onPrimary, onReplica);
    for (const s of sessions) {
      assert.equal((await s.scsi(TUR)).status, 0);
      assert.equal(capacityBytes(await s.scsi(READ_CAPACITY_16, { read: 32 })), 16 * MiB);
    }

    r = await resize(primary, 'vol', '40M');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^volume vol grown: 16\.0 MiB → 40\.0 MiB \(41943040 bytes\)/);
    assert.equal(await sizeOf(primary, 'vol'), 40 * MiB);
    assert.equal(await sizeOf(primary, 'other'), 8 * MiB);
    assert.equal(metricValue(await metrics(primary), 'offsite_volume_size_bytes', 'volume="vol"'), 40 * MiB);
    assert.ok(primary.logs.some((l) => l.msg === 'volume grown online' && l.previousSizeBytes === 16 * MiB));

    // The logged-in initiator's next command gets the unit attention, once; then the new capacity.
    let o = await onPrimary.scsi(TUR);
    assert.equal(o.status, 2, 'CHECK CONDITION');
    assert.deepEqual(senseOf(o), [0x6, 0x2a, 0x09], 'UNIT ATTENTION, CAPACITY DATA HAS CHANGED');
    assert.equal((await onPrimary.scsi(TUR)).status, 0);
    assert.equal(capacityBytes(await onPrimary.scsi(READ_CAPACITY_16, { read: 32 })), 40 * MiB);

    // Writes past the old end, at the primary; the old data is intact; all of it reaches the replica.
    r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 15M 1M', '-c', 'read -P 0 16M 24M', '-c', 'write -P 0x22 16M 1M', '-c', 'write -P 0x33 39M 1M', primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    await waitCaughtUp(primary, replica);
    assert.equal(await sizeOf(replica, 'vol'), 40 * MiB);
    assert.ok(replica.logs.some((l) => l.msg === 'replica volume grown with the primary' && l.previousSizeBytes === 16 * MiB));
    assert.ok(primary.logs.some((l) => l.msg === 'replication link restarted'));
    assert.ok(!primary.logs.some((l) => l.msg === 'replication link error'), 'the planned reconnect is not an error');
    // The replica's logged-in initiator is told too (its LU is read-only, its capacity still changes).
    o = await onReplica.scsi(TUR);
    assert.deepEqual(senseOf(o), [0x6, 0x2a, 0x09]);
    assert.equal(capacityBytes(await onReplica.scsi(READ_CAPACITY_16, { read: 32 })), 40 * MiB);
    await assertSameVolume(primary, replica, 'vol', dir);
    await assertSameVolume(primary, replica, 'other', dir);
    r = await run(process.execPath, [CLI, 'verify', '--http', `127.0.0.1:${primary.httpPort}`, '--wait'], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /48\.0 MiB compared, no difference/);

    // Never shrinks; the same size is nothing to do; sizes must be whole blocks; unknown volumes and replicas refuse.
    r = await resize(primary, 'vol', '32M');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /never shrink.*\[VOLUME_SHRINK\]/);
    r = await resize(primary, 'vol', '40M');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /already 40\.0 MiB .*nothing to do/);
    r = await resize(primary, 'vol', '41943041');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /multiple of 512/);
    r = await resize(primary, 'nope', '1G');
    assert.match(r.stderr, /UNKNOWN_VOLUME/);
    r = await resize(replica, 'vol', '64M');
    assert.match(r.stderr, /NOT_PRIMARY/);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/resize`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ volume: 'vol', size: 'huge' }) });
    assert.equal(res.status, 400);
    assert.equal(await sizeOf(primary, 'vol'), 40 * MiB, 'refused calls changed nothing');
    assert.equal(await sizeOf(replica, 'vol'), 40 * MiB);

    // Restarts keep the size (the primary started with its original --volume vol:16M: served at 40M).
    for (const s of sessions.splice(0)) await s.logout().catch(() => undefined);
    await replica.stop();
    replica = await startReplica(path.join(dir, 'b'), replPort);
    await primary.stop();
    primary = await startPrimary(path.join(dir, 'a'), ['vol:16M', 'other:8M'], replPort, history);
    assert.equal(await sizeOf(primary, 'vol'), 40 * MiB);
    assert.equal(await sizeOf(replica, 'vol'), 40 * MiB);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 39M 512k', primary.url('vol')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'vol', dir);
    // offsite replay of the stopped primary's journal gives the grown image, every write in place.
    await primary.stop();
    const out = path.join(dir, 'replayed.img');
    r = await run(process.execPath, [CLI, 'replay', '--data', path.join(dir, 'a'), '--volume', 'vol', '--out', out], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.ok(readFileSync(out).equals(readFileSync(path.join(dir, 'vol.primary.img'))), 'the replayed image equals the primary');
  } finally {
    for (const s of sessions) await s.logout().catch(() => undefined);
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('add-volume: a volume added to a running primary is served at once, journaled and replicated (the replica creates its copy), kept across restarts, and fenced like the others', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const aDir = path.join(dir, 'a');
  let replica = await startReplica(path.join(dir, 'b'), replPort);
  let primary = await startPrimary(aDir, ['vol:8M'], replPort);
  // A primary whose only witness never answers: fenced, every write refused.
  let fenced: RunningAppliance | undefined = await startAppliance({ dataDir: path.join(dir, 'f'), volumes: ['f:1M'], args: ['--witness', `127.0.0.1:${await freePort()}`] });
  const add = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'add-volume', '--http', `127.0.0.1:${a.httpPort}`, ...args], { timeoutMs: 60_000 });
  try {
    let r = await add(primary, 'added', '12M');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`^volume added added: 12\\.0 MiB \\(12582912 bytes\\), served as ${TARGET_PREFIX}:added`));
    assert.equal(await sizeOf(primary, 'added'), 12 * MiB);
    r = await run('iscsi-ls', ['-s', `iscsi://127.0.0.1:${primary.iscsiPort}`]);
    assert.match(r.stdout, new RegExp(`${TARGET_PREFIX}:added`));
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 11M 1M', primary.url('added')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);
    assert.equal(await sizeOf(replica, 'added'), 12 * MiB);
    await assertSameVolume(primary, replica, 'added', dir);
    assert.ok(((await primary.status()).headSeq as number) >= 1, 'the write was journaled');

    // Refused: a name in use, a bad name, a size that is not whole blocks, on a replica.
    r = await add(primary, 'added', '1M');
    assert.match(r.stderr, /VOLUME_EXISTS/);
    r = await add(primary, 'Bad/Name', '1M');
    assert.match(r.stderr, /invalid volume name/);
    r = await add(primary, 'odd', '1000');
    assert.match(r.stderr, /multiple of 512/);
    r = await add(replica, 'more', '1M');
    assert.match(r.stderr, /NOT_PRIMARY/);

    // A restart with the original configuration (only vol) still serves it, with its data.
    await primary.stop();
    primary = await startPrimary(aDir, ['vol:8M'], replPort);
    assert.equal(await sizeOf(primary, 'added'), 12 * MiB);
    assert.ok(primary.logs.some((l) => String(l.msg).startsWith('volume added at run time: served')));
    r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x66 11M 1M', '-c', 'write -P 0x67 0 64k', primary.url('added')]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
    await replica.stop();
    replica = await startReplica(path.join(dir, 'b'), replPort);
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'added', dir);

    // A fenced primary's added volume refuses writes like its others (the split-brain gate applies to it).
    r = await add(fenced, 'g', '1M');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const w = await RawInitiator.session(fenced.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:added-fenced', targetName: `${TARGET_PREFIX}:g` });
    try {
      await w.scsi(TUR); // a unit attention, if any, is taken here
      const o = await w.write10(0, Buffer.alloc(512, 1));
      assert.equal(o.status, 2, 'the write is refused');
      assert.equal(senseOf(o)[0], 0x7, 'with DATA PROTECT');
    } finally {
      await w.logout().catch(() => undefined);
    }
  } finally {
    await fenced?.stop();
    fenced = undefined;
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
