/**
 * src/appliance/appliance.ts (awaitPrimarySilence): an operator's promote (without --force) goes
 * ahead only once the primary has been silent for a while, not merely disconnected at that
 * instant. A primary that comes back while the promote waits gets the promote refused; one that
 * stays away gets the promotion.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

test('a promote right after the primary went away waits for its silence: refused when the primary comes back, done when it does not', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const b = await startReplica(path.join(dir, 'b'), replPort, [], { OFFSITE_PROMOTE_QUIET_MS: '5000' });
  let a = await startPrimary(path.join(dir, 'a'), ['v:8M'], replPort);
  try {
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 5 0 64k', a.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    await waitCaughtUp(a, b);
    await a.stop();
    // The link is down this instant, but the primary was heard just now: the promote waits, and the primary returns.
    const promoting = run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    a = await startPrimary(path.join(dir, 'a'), ['v:8M'], replPort);
    const refused = await promoting;
    assert.equal(refused.code, 1, refused.stdout);
    assert.match(refused.stderr, /is connected to this replica right now.*\[PRIMARY_CONNECTED\]/);
    assert.equal((await b.status()).role, 'replica');
    assert.ok(b.logs.some((l) => l.msg === 'promote: waiting until the primary has been silent long enough'));
    await waitCaughtUp(a, b);

    await a.stop();
    const p = await run(process.execPath, [CLI, 'promote', '--http', `127.0.0.1:${b.httpPort}`]);
    assert.equal(p.code, 0, p.stderr);
    assert.equal((await b.status()).role, 'primary');
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 6 0 4k', b.url('v')]);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    await a.stop();
    await b.stop();
    removeDir(dir);
  }
});
