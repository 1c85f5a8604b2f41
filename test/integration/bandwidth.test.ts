/**
 * A bandwidth cap changed at run time outlives a restart (issue 4's POST /bandwidth, as an
 * operator expects of an appliance setting), until the configured cap changes or --reset.
 */
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startPrimary } from '../helpers/replication';

type Link = { maxBandwidthBytesPerSec: number; maxBandwidthSource: string; configuredMaxBandwidthBytesPerSec: number };
const link = async (a: RunningAppliance): Promise<Link> => (await a.status()).link as Link;
const cli = (a: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, 'bandwidth', '--http', `127.0.0.1:${a.httpPort}`, ...args]);

test('bandwidth: a run-time change is saved and kept across restarts; a changed configuration or --reset returns to the configured cap', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const data = path.join(dir, 'a');
  // No replica needs to listen: the cap belongs to the primary's shipper.
  const replPort = await freePort();
  let primary = await startPrimary(data, ['bw:4M'], replPort, ['--max-bandwidth', '2MB/s']);
  try {
    const { maxBandwidthBytesPerSec, maxBandwidthSource, configuredMaxBandwidthBytesPerSec } = await link(primary);
    assert.deepEqual({ maxBandwidthBytesPerSec, maxBandwidthSource, configuredMaxBandwidthBytesPerSec }, { maxBandwidthBytesPerSec: 2_000_000, maxBandwidthSource: 'configured', configuredMaxBandwidthBytesPerSec: 2_000_000 });
    let r = await cli(primary, '5MB/s');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /cap: 5000000 bytes\/s \(saved: kept across restarts/);
    assert.equal((await link(primary)).maxBandwidthSource, 'runtime');
    assert.ok(existsSync(path.join(data, 'state', 'bandwidth.json')));
    r = await run(process.execPath, [CLI, 'status', '--http', `127.0.0.1:${primary.httpPort}`]);
    assert.match(r.stdout, /cap 4\.8 MiB\/s \(set at run time; configured 1\.9 MiB\/s\)/);

    // Same configuration after a restart: the change holds, and the log says so.
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '2MB/s']);
    let l = await link(primary);
    assert.equal(l.maxBandwidthBytesPerSec, 5_000_000);
    assert.equal(l.maxBandwidthSource, 'runtime');
    assert.ok(primary.logs.some((x) => String(x.msg).startsWith('replication bandwidth cap: keeping the change made at run time')));

    // --reset: back to the configured cap, now and after a restart.
    r = await cli(primary, '--reset');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /cap: 2000000 bytes\/s \(the configured cap\)/);
    assert.equal((await link(primary)).maxBandwidthSource, 'configured');
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '2MB/s']);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 2_000_000);

    // The operator changes the configured cap after a run-time change: the configuration wins.
    r = await cli(primary, 'unlimited');
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 0);
    await primary.stop();
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '3MB/s']);
    l = await link(primary);
    assert.equal(l.maxBandwidthBytesPerSec, 3_000_000);
    assert.equal(l.maxBandwidthSource, 'configured');
    assert.ok(primary.logs.some((x) => String(x.msg).startsWith('replication bandwidth cap: the configured cap changed since the run-time change')));
    assert.ok(!existsSync(path.join(data, 'state', 'bandwidth.json')), 'the overtaken change is dropped');

    // A damaged settings file is reported and ignored, never fatal.
    await primary.stop();
    writeFileSync(path.join(data, 'state', 'bandwidth.json'), '{"bytesPerSec": "lots"');
    primary = await startPrimary(data, [], replPort, ['--max-bandwidth', '3MB/s']);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 3_000_000);
    assert.ok(primary.logs.some((x) => String(x.msg).startsWith('replication bandwidth cap: the saved run-time change is unreadable')));

    // Usage errors: a rate and --reset, or neither; the API says the same.
    r = await cli(primary, '1MB/s', '--reset');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /a rate .* or --reset, not both/);
    r = await cli(primary);
    assert.equal(r.code, 2);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bandwidth`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ rate: '1MB/s', reset: true }) });
    assert.equal(res.status, 400);
    assert.equal((await link(primary)).maxBandwidthBytesPerSec, 3_000_000, 'a refused call changed nothing');
  } finally {
    await primary.stop();
    removeDir(dir);
  }
});
