/**
 * src/appliance/replication.ts (backlog): the RPO a primary reports is the age of the oldest write
 * its replica lacks, also when that write's record is no longer in the journal. With the replica
 * away and the journal over its cap, the oldest records are folded before they were shipped; the
 * RPO must go on counting from them, not from the oldest record still retained.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, metricValue, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

test('records folded before the replica got them: the RPO still counts from the oldest write the replica lacks', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  // Nothing listens there: the replica is away the whole time.
  const replPort = await freePort();
  let primary = await startPrimary(path.join(dir, 'a'), ['v:64M'], replPort, ['--journal-max', '4M']);
  let replica: RunningAppliance | undefined;
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 64k', primary.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    const firstWriteAt = Date.now();
    await until('the RPO to count from the first write', async () => Number((await primary.status()).rpoSeconds) >= 3, 20_000, 200);
    // Far more than the cap: the first record goes before it was ever shipped.
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 2 1M 12M', primary.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    await until('unshipped records to be folded', async () => (metricValue(await metrics(primary), 'offsite_journal_folded_unshipped_records_total') ?? 0) > 0, 30_000, 200);
    const st = await primary.status();
    const lowest = (Date.now() - firstWriteAt) / 1000 - 0.5;
    const oldest = (st.journal as { oldestSeq: number }).oldestSeq;
    assert.ok(oldest > 1, `record 1 is still retained (oldest ${oldest})`);
    assert.ok(Number(st.rpoSeconds) >= lowest, `RPO ${String(st.rpoSeconds)} s, but the replica lacks a write from ${((Date.now() - firstWriteAt) / 1000).toFixed(1)} s ago`);
    // A restart: no retained record carries that write's time any more, the state directory does.
    const missing = JSON.parse(readFileSync(path.join(dir, 'a', 'state', 'rpo-missing-since.json'), 'utf8')) as { sinceMs: number };
    assert.ok(missing.sinceMs <= firstWriteAt && missing.sinceMs >= firstWriteAt - 5000, `kept ${new Date(missing.sinceMs).toISOString()}`);
    await primary.stop();
    primary = await startPrimary(path.join(dir, 'a'), ['v:64M'], replPort, ['--journal-max', '4M']);
    const again = await primary.status();
    const lowestAgain = (Date.now() - firstWriteAt) / 1000 - 0.5;
    assert.ok(Number(again.rpoSeconds) >= lowestAgain, `after a restart the RPO is ${String(again.rpoSeconds)} s, but the replica lacks a write from ${((Date.now() - firstWriteAt) / 1000).toFixed(1)} s ago`);
    // The replica comes: once it holds everything, the kept time is dropped with the backlog.
    replica = await startReplica(path.join(dir, 'b'), replPort);
    await waitCaughtUp(primary, replica, 60_000);
    await until('the RPO to fall to 0 and the kept time to go', async () => Number((await primary.status()).rpoSeconds) === 0 && !existsSync(path.join(dir, 'a', 'state', 'rpo-missing-since.json')), 10_000, 100);
  } finally {
    await replica?.stop();
    await primary.stop();
    removeDir(dir);
  }
});
