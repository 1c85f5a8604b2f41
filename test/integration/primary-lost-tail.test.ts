/**
 * src/appliance/appliance.ts (startGeneration, forkHistory) and src/replication/shipper.ts
 * (checkNotAhead): the primary ships records before it syncs them, so a primary can come back
 * holding less than its replica got: after a power loss (the last run's records gone, its pid
 * file left behind), or when its data directory is restored from a backup. Its next writes are
 * numbered like the lost ones. The replica must then give up the records the primary lost (saved
 * aside as a split directory) and resync, never resume after its own point over a different
 * history. Real appliances and qemu-io; a power loss is simulated by putting back the journal and
 * volumes as they were before the last run while keeping what that run made durable (its
 * lineage, its pid file).
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const BLOCK = 4096;

/** One qemu-io write per block, [from, to), each of pattern `p`: one journal record each. */
async function writeBlocks(app: RunningAppliance, from: number, to: number, p: number): Promise<void> {
  const cmds: string[] = [];
  for (let b = from; b < to; b++) cmds.push('-c', `write -P ${p} ${b * BLOCK} ${BLOCK}`);
  const r = await run('qemu-io', ['-f', 'raw', ...cmds, app.url('v')]);
  assert.equal(r.code, 0, r.stderr);
}

function copyDir(from: string, to: string): void {
  rmSync(to, { recursive: true, force: true });
  cpSync(from, to, { recursive: true });
}

const splits = (dataDir: string): string[] => readdirSync(dataDir).filter((f) => f.startsWith('split-'));

type Lose = (aDir: string, before: string) => void;

/**
 * A primary at a point (records of blocks 0..9) is saved as `before`; it goes on (blocks 10..29,
 * pattern 0x22), all shipped and held by the replica. Then `lose` takes the primary back, and it
 * starts again and writes blocks 10..14 (0x33) and enough more (blocks 40..) to pass the
 * replica's point. The replica must end equal to the primary, with the lost records saved aside.
 */
async function lostTail(t: { diagnostic(s: string): void }, opts: { idleRestartBeforeSave: boolean; killLastRun: boolean; lose: Lose }): Promise<{ primaryLogs: Record<string, unknown>[] }> {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  const before = path.join(dir, 'a-before');
  const replPort = await freePort();
  const replica = await startReplica(bDir, replPort, ['--journal-retain', '1h']);
  let primary: RunningAppliance | undefined;
  try {
    primary = await startPrimary(aDir, ['v:16M'], replPort);
    await writeBlocks(primary, 0, 10, 0x11);
    await waitCaughtUp(primary, replica);
    await primary.stop();
    if (opts.idleRestartBeforeSave) {
      // A run that writes nothing: its start begins a generation no record is in yet.
      primary = await startPrimary(aDir, ['v:16M'], replPort);
      await waitCaughtUp(primary, replica);
      await primary.stop();
    }
    copyDir(aDir, before);

    primary = await startPrimary(aDir, ['v:16M'], replPort);
    await writeBlocks(primary, 10, 30, 0x22);
    const { headSeq: replicaHas } = await waitCaughtUp(primary, replica);
    if (opts.killLastRun) await primary.kill('SIGKILL');
    else await primary.stop();
    opts.lose(aDir, before);

    primary = await startPrimary(aDir, ['v:16M'], replPort);
    const head = (await primary.status()).headSeq as number;
    assert.ok(head < replicaHas, `the primary came back at ${head}, the replica holds ${replicaHas}`);
    await writeBlocks(primary, 10, 15, 0x33);
    await writeBlocks(primary, 40, 40 + (replicaHas - head) + 5, 0x44);
    await waitCaughtUp(primary, replica, 30_000);
    // Blocks 15..29 hold 0x22 at the replica only (records the primary lost): they must be gone.
    await assertSameVolume(primary, replica, 'v', dir);
    const saved = splits(bDir);
    assert.equal(saved.length, 1, `the replica's records past ${head} were not saved aside (${saved.join(', ')})`);
    const rs = await replica.status();
    t.diagnostic(`primary back at ${head}, replica had ${replicaHas}; replica now ${String(rs.appliedSeq)} ${String(rs.state)}`);
    return { primaryLogs: primary.logs };
  } finally {
    await primary?.stop();
    await replica.stop();
    removeDir(dir);
  }
}

const NEW_GENERATION = 'new generation of this data: the next write is numbered right after the journal head';

const restoreBackup: Lose = (aDir, before) => copyDir(before, aDir);
/** What a power loss keeps: the lineage and pid file (synced at the run's start); the journal and volumes as before the run (none of its writes reached the disk). */
const loseLastRun: Lose = (aDir, before) => {
  for (const sub of ['journal', 'volumes']) copyDir(path.join(before, sub), path.join(aDir, sub));
  assert.ok(existsSync(path.join(aDir, 'offsite.pid')));
};

const CASES: { name: string; idleRestartBeforeSave: boolean; killLastRun: boolean; lose: Lose; uncleanStop: boolean; lineageCaughtIt?: boolean }[] = [
  { name: 'a primary restored from a backup (clean stops): its start begins a new generation and the replica resyncs from the backup point', idleRestartBeforeSave: false, killLastRun: false, lose: restoreBackup, uncleanStop: false },
  { name: 'a primary that lost power after a run whose records were all unsynced: the pid file left behind begins a new generation', idleRestartBeforeSave: true, killLastRun: true, lose: loseLastRun, uncleanStop: true },
  { name: "a backup of an idle run restored (its last generation holds no record here, the replica has records of it): the new start's generation still makes the replica resync", idleRestartBeforeSave: true, killLastRun: false, lose: restoreBackup, uncleanStop: false, lineageCaughtIt: true },
];

for (const c of CASES) {
  test(c.name, { timeout: 180_000 }, async (t) => {
    const { primaryLogs } = await lostTail(t, c);
    assert.ok(primaryLogs.some((l) => l.msg === NEW_GENERATION && l.uncleanStop === c.uncleanStop));
    if (c.lineageCaughtIt) assert.ok(!primaryLogs.some((l) => l.msg === 'the replica is ahead of this primary in the same history (this primary lost records it had shipped)'), 'the lineage check, not the last-resort refusal, caught it');
  });
}
