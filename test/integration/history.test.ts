/**
 * `offsite history` (GET /history): the retained journal by time on a running site, primary and
 * replica alike, to find the point to go back to. A burst of writes (how ransomware encrypting
 * a volume looks) stands out, and each line names the point at its end, which a test failover
 * then shows.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

type Bucket = { start: string; firstSeq: number; lastSeq: number; point: number; records: number; bytes: number; volumes: Record<string, number> };
type History = { role: string; bucketSeconds: number; window: { fromSeq: number; toSeq: number }; buckets: Bucket[] };

const io = async (url: string, ...cmds: string[]) => {
  const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), url]);
  assert.equal(r.code, 0, r.stderr);
};
const history = (site: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'history', '--http', `127.0.0.1:${site.httpPort}`, ...args]);

test('history: what was written when, on both sites; a burst stands out; each line names a point to go back to', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const retain = ['--journal-retain', '1h'];
  const replica = await startReplica(path.join(dir, 'b'), replPort, retain);
  const primary = await startPrimary(path.join(dir, 'a'), ['app:32M'], replPort, retain);
  try {
    // Quiet writes, one per 300 ms, then a burst.
    for (let i = 0; i < 6; i++) {
      await io(primary.url('app'), `write -P ${0x10 + i} ${i * 64}k 64k`);
      await new Promise((r) => setTimeout(r, 300));
    }
    const { headSeq: beforeBurst } = await waitCaughtUp(primary, replica);
    await new Promise((r) => setTimeout(r, 300));
    await io(primary.url('app'), 'write -P 0xee 8M 16M');
    const { headSeq } = await waitCaughtUp(primary, replica);

    const json = await history(primary, '--bucket', '250ms', '--json');
    assert.equal(json.code, 0, json.stderr);
    const h = JSON.parse(json.stdout) as History;
    assert.equal(h.role, 'primary');
    assert.equal(h.bucketSeconds, 0.25);
    assert.ok(h.buckets.length >= 7, `${h.buckets.length} buckets`);
    assert.equal(h.buckets.reduce((n, b) => n + b.records, 0), headSeq, 'every retained record is in some bucket');
    assert.equal(h.buckets[h.buckets.length - 1].lastSeq, headSeq);
    const last = h.buckets[h.buckets.length - 1];
    assert.ok(last.bytes >= 16 << 20 || h.buckets.some((b) => b.firstSeq > beforeBurst && b.bytes >= 4 << 20), 'the burst is in the last buckets');
    const quiet = h.buckets.find((b) => b.lastSeq === beforeBurst);
    assert.ok(quiet, `a line ends right before the burst (sequence ${beforeBurst}): ${JSON.stringify(h.buckets.map((b) => [b.firstSeq, b.lastSeq]))}`);
    assert.equal(quiet.point, beforeBurst);
    // The replica holds the same history: the primary's sequences and times.
    const r = JSON.parse((await history(replica, '--bucket', '250ms', '--json')).stdout) as History;
    assert.equal(r.role, 'replica');
    assert.deepEqual(r.buckets.map((b) => [b.start, b.firstSeq, b.lastSeq, b.records, b.bytes]), h.buckets.map((b) => [b.start, b.firstSeq, b.lastSeq, b.records, b.bytes]));
    // The text marks the burst, and the point before it is a test failover away.
    const text = await history(replica, '--bucket', '250ms');
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^replica: retained sequences \d+\.\.\d+/);
    assert.match(text.stdout, /BURST: \d+x the median/);
    assert.doesNotMatch(text.stdout.split('\n').find((l) => l.includes(`..${beforeBurst} `)) ?? '', /BURST/);
    const tf = await run(process.execPath, [CLI, 'test-failover', '--http', `127.0.0.1:${replica.httpPort}`, '--seq', String(quiet.point)]);
    assert.equal(tf.code, 0, tf.stderr);
    const copy = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x15 320k 64k', '-c', 'read -P 0 8M 16M', replica.url('app-test')]);
    assert.equal(copy.code, 0, copy.stderr);
    assert.doesNotMatch(copy.stdout, /Pattern verification failed/);
    // Bad buckets are refused.
    for (const bucket of ['0', 'soon', '-5']) {
      const res = await fetch(`http://127.0.0.1:${primary.httpPort}/history?bucket=${bucket}`);
      assert.equal(res.status, 400, bucket);
    }
  } finally {
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
});
