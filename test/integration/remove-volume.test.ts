/**
 * Removing a volume (`offsite remove-volume`, POST /volumes/remove): refused while an initiator
 * is logged in (unless --force, which ends its session), then no longer served on the primary,
 * its files moved aside, never deleted. The replica gets every write taken before the removal
 * (here: made while shipping was paused) and only then retires its copy, moving it aside too:
 * both moved-aside images are equal. The name cannot come back as a new volume (add-volume, a
 * configuration that still names it), the journal still folds the removed volume's records past
 * its cap, and the other volumes go on replicating. Real appliances, the project's raw iSCSI
 * initiator, qemu-io and iscsi-ls.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, TARGET_PREFIX, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { RawInitiator, pattern } from '../helpers/raw-initiator';
import { assertSameVolume, freePort, metricValue, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

const MiB = 1 << 20;
const TUR = Buffer.alloc(6);

const cli = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, args[0], '--http', `127.0.0.1:${a.httpPort}`, ...args.slice(1)], { timeoutMs: 60_000 });
const targets = async (a: RunningAppliance) => (await run('iscsi-ls', [`iscsi://127.0.0.1:${a.iscsiPort}`])).stdout;
type Removed = { name: string; lastSeq: number; movedTo: string; removedAt: string };
const removedOf = async (a: RunningAppliance) => ((await a.status()).removedVolumes as Removed[]) ?? [];

test('remove-volume: refused while in use, then unserved and moved aside on the primary; the replica retires its copy only once it has every write of it; the name stays taken', { timeout: 300_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const aDir = path.join(dir, 'a');
  const history = ['--journal-retain', '1h'];
  let replica = await startReplica(path.join(dir, 'b'), replPort, history);
  // A small cap: the removed volume's records must still fold into the history base.
  const primaryArgs = [...history, '--journal-max', '8M'];
  let primary = await startPrimary(aDir, ['vol:16M', 'old:4M'], replPort, primaryArgs);
  let session: RawInitiator | undefined;
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x31 0 4M', primary.url('old')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);

    session = await RawInitiator.session(primary.iscsiPort, { initiatorName: 'iqn.2026-11.dev.offsite.test:remove', targetName: `${TARGET_PREFIX}:old` });
    await session.scsi(TUR); // a unit attention, if any, is taken here
    r = await cli(primary, 'remove-volume', 'old');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /volume old has 1 initiator session\(s\) logged in \(iqn\.2026-11\.dev\.offsite\.test:remove\).*--force.*\[VOLUME_IN_USE\]/);
    r = await cli(replica, 'remove-volume', 'old');
    assert.match(r.stderr, /NOT_PRIMARY/);
    r = await cli(primary, 'remove-volume', 'nope');
    assert.match(r.stderr, /UNKNOWN_VOLUME/);

    // Shipping paused: the last writes to the volume are taken but not at the replica yet.
    r = await cli(primary, 'pause', '--reason', 'remove-volume test');
    assert.equal(r.code, 0, r.stderr);
    const last = pattern(64 * 1024, 7);
    assert.equal((await session.write10(128, last)).status, 0);
    r = await cli(primary, 'remove-volume', 'old', '--force');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const [gone] = await removedOf(primary);
    assert.equal(gone?.name, 'old');
    assert.match(r.stdout, new RegExp(`^volume old removed: ${TARGET_PREFIX}:old is no longer served; 1 session\\(s\\) ended; its files \\(4\\.0 MiB\\) are in ${gone.movedTo}, to delete when no longer needed; the replica retires its copy once it has every write up to sequence ${gone.lastSeq}\\n$`));
    assert.equal(gone.lastSeq, (await primary.status()).headSeq, 'every record so far, the last write to it included');
    assert.ok(await session.closedWithin(10_000), 'the forced session is ended');
    await session.logout().catch(() => undefined);
    session = undefined;
    assert.doesNotMatch(await targets(primary), /:old\b/);
    assert.ok(!existsSync(path.join(aDir, 'volumes', 'old.img')) && !existsSync(path.join(aDir, 'volumes', 'old.json')), 'no longer in volumes/');
    const primaryCopy = readFileSync(path.join(gone.movedTo, 'old.img'));
    assert.deepEqual(primaryCopy.subarray(128 * 512, 128 * 512 + last.length), last, 'the moved-aside image holds the last write');
    assert.equal(primaryCopy[0], 0x31);

    // The replica heard of the removal at the new handshake but holds the copy: writes are missing.
    await until('the replica to learn of the removal', async () => (((await replica.status()).pendingRemovals as { name: string }[] | undefined) ?? []).some((p) => p.name === 'old'), 30_000);
    assert.match(await targets(replica), /:old\b/, 'still served at the replica while writes of it are missing');
    r = await cli(replica, 'status');
    assert.match(r.stdout, new RegExp(`removing:    old: the primary removed it; this copy is retired once every write up to sequence ${gone.lastSeq} is applied here`));

    r = await cli(primary, 'resume');
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);
    await until('the replica to retire its copy', async () => (await removedOf(replica)).some((x) => x.name === 'old'), 30_000);
    const [retired] = await removedOf(replica);
    assert.equal(retired.lastSeq, gone.lastSeq);
    assert.doesNotMatch(await targets(replica), /:old\b/);
    assert.ok(readFileSync(path.join(retired.movedTo, 'old.img')).equals(primaryCopy), "the replica's retired copy equals the primary's removed volume");
    assert.deepEqual((await replica.status()).pendingRemovals, []);

    // The name stays taken; a configuration that still names it is refused with a clear error.
    r = await cli(primary, 'add-volume', 'old', '1M');
    assert.match(r.stderr, /VOLUME_REMOVED/);
    await primary.stop();
    await assert.rejects(startPrimary(aDir, ['vol:16M', 'old:4M'], replPort, primaryArgs), /offsite serve: volume old was removed \(offsite remove-volume, .*take it out of the configuration.*\[VOLUME_REMOVED\]/);
    primary = await startPrimary(aDir, ['vol:16M'], replPort, primaryArgs);
    assert.equal((await removedOf(primary))[0]?.name, 'old');

    // The other volume goes on replicating; past the cap, the journal folds the removed volume's records too.
    for (let i = 0; i < 3; i++) {
      r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${0x41 + i} 0 16M`, primary.url('vol')]);
      assert.equal(r.code, 0, r.stderr);
    }
    await waitCaughtUp(primary, replica);
    await assertSameVolume(primary, replica, 'vol', dir);
    await until("the journal to fold the removed volume's records", async () => ((await primary.status()).journal as { window: { fromSeq: number } }).window.fromSeq > gone.lastSeq, 30_000);
    assert.ok((metricValue(await metrics(primary), 'offsite_journal_folded_records_total') ?? 0) > 0);
    assert.ok(!primary.logs.some((l) => l.msg === 'journal upkeep failed'), 'no upkeep failure');
    assert.equal(await replica.status().then((s) => s.state), 'consistent');

    // A replica restart keeps the copy retired.
    await replica.stop();
    replica = await startReplica(path.join(dir, 'b'), replPort, history);
    await waitCaughtUp(primary, replica);
    assert.doesNotMatch(await targets(replica), /:old\b/);
    assert.equal((await removedOf(replica))[0]?.name, 'old');

    // Added, written and removed while the replica is away: it never had the volume, creates it
    // for the writes still to come, and retires it like the other.
    await replica.stop();
    r = await cli(primary, 'add-volume', 'brief', '1M');
    assert.equal(r.code, 0, r.stderr);
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 64k 128k', primary.url('brief')]);
    assert.equal(r.code, 0, r.stderr);
    r = await cli(primary, 'remove-volume', 'brief');
    assert.equal(r.code, 0, r.stderr);
    replica = await startReplica(path.join(dir, 'b'), replPort, history);
    await waitCaughtUp(primary, replica);
    await until('the replica to retire the brief volume', async () => (await removedOf(replica)).some((x) => x.name === 'brief'), 30_000);
    const [p2, r2] = [(await removedOf(primary)).find((x) => x.name === 'brief')!, (await removedOf(replica)).find((x) => x.name === 'brief')!];
    const brief = readFileSync(path.join(p2.movedTo, 'brief.img'));
    assert.equal(brief[64 * 1024], 0x5a);
    assert.ok(readFileSync(path.join(r2.movedTo, 'brief.img')).equals(brief), "the replica's copy of a volume it never had equals the primary's");
  } finally {
    await session?.logout().catch(() => undefined);
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});

test('remove-volume: when the journal cap folded writes of the removed volume before the replica got them, the replica still retires its copy, but says it is incomplete', { timeout: 300_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const bDir = path.join(dir, 'b');
  let replica = await startReplica(bDir, replPort);
  const primary = await startPrimary(path.join(dir, 'a'), ['vol:16M', 'old:4M'], replPort, ['--journal-max', '1M']);
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x31 0 4M', primary.url('old')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(primary, replica);
    await replica.stop();
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 64k', primary.url('old')]);
    assert.equal(r.code, 0, r.stderr);
    r = await cli(primary, 'remove-volume', 'old');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const [gone] = await removedOf(primary);
    for (let i = 0; i < 3; i++) {
      r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${0x41 + i} 0 4M`, primary.url('vol')]);
      assert.equal(r.code, 0, r.stderr);
    }
    await until('the journal to fold records the replica never got', () => primary.logs.some((l) => String(l.msg).startsWith('journal over its cap with the replica behind')), 30_000);
    replica = await startReplica(bDir, replPort);
    await waitCaughtUp(primary, replica, 120_000);
    await assertSameVolume(primary, replica, 'vol', dir);
    await until('the replica to retire its copy', async () => (await removedOf(replica)).some((x) => x.name === 'old'), 30_000);
    const [retired] = (await removedOf(replica)) as (Removed & { incomplete?: boolean })[];
    assert.equal(retired.incomplete, true, 'the retired copy is said to be incomplete');
    assert.ok(replica.logs.some((l) => String(l.msg).startsWith('the retired copy of a removed volume is INCOMPLETE')));
    assert.equal(readFileSync(path.join(gone.movedTo, 'old.img'))[0], 0x77, "the primary's moved-aside copy is the complete one");
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
