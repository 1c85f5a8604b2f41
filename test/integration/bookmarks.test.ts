/**
 * Bookmarks (offsite bookmark NAME): a name for the point after every write acknowledged so far,
 * taken on the primary (e.g. while the application is quiesced), shipped to the replica, and
 * taken there by name: a test failover, a promotion, and an offline replay at it. A bookmark
 * taken while the link is slower than the writes (the shipper coalescing) stays a point the
 * replica can go back to: a coalesced batch ends at it.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { COALESCING, freePort, hotOverwrites, metricValue, metrics, readVolume, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';

const cli = (site: RunningAppliance, ...args: string[]) => run(process.execPath, [CLI, args[0], '--http', `127.0.0.1:${site.httpPort}`, ...args.slice(1)]);

test('bookmarks: taken on the primary mid-burst, kept by the replica, gone back to by name (test failover, promote, replay)', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  const retain = COALESCING.replica;
  let replica = await startReplica(bDir, replPort, retain);
  // A slow link against incompressible overwrites: the shipper coalesces.
  let primary: RunningAppliance | undefined = await startPrimary(aDir, ['hot:8M'], replPort, COALESCING.primary);
  try {
    const overwrite = hotOverwrites(dir);
    const burst = (from: number, count: number) => overwrite(primary!.url('hot'), from, count);
    await burst(0, 160);
    // The application is quiet here: its state, and a name for it.
    const quiesced = await readVolume(primary, 'hot', path.join(dir, 'quiesced.img'));
    let r = await cli(primary, 'bookmark', 'app-quiesced');
    assert.equal(r.code, 0, r.stderr);
    const m = /^bookmark app-quiesced: sequence (\d+) \(/.exec(r.stdout);
    assert.ok(m, r.stdout);
    const seq = Number(m[1]);
    assert.equal(seq, (await primary.status()).headSeq);
    await burst(160, 160);
    await waitCaughtUp(primary, replica, 120_000);
    const saved = metricValue(await metrics(primary), 'offsite_rpo_coalesced_bytes_saved_total');
    assert.ok(saved !== undefined && saved > 0, 'nothing was coalesced');

    // Refusals: the same name for another point, a bad name, on the replica.
    r = await cli(primary, 'bookmark', 'app-quiesced');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already names sequence \d+.*BOOKMARK_EXISTS/);
    r = await cli(primary, 'bookmark', 'no spaces');
    assert.match(r.stderr, /BOOKMARK_BAD_NAME/);
    r = await cli(replica, 'bookmark', 'x');
    assert.match(r.stderr, /take one on the primary.*NOT_PRIMARY/);
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bookmarks`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 7 }) });
    assert.equal(res.status, 400);

    // The replica has it, after a restart too.
    await replica.stop();
    replica = await startReplica(bDir, replPort, retain);
    r = await cli(replica, 'bookmarks');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^app-quiesced +sequence ${seq} +\\S+ +retained$`, 'm'));
    const h = await cli(replica, 'history', '--bucket', '1h');
    assert.match(h.stdout, /bookmarks: app-quiesced/);
    // Counted for monitoring (e.g. an alert when a nightly bookmark is overdue), and in the status.
    const mt = await metrics(replica);
    assert.equal(metricValue(mt, 'offsite_bookmarks'), 1);
    const newest = ((await replica.status()).bookmarks as { count: number; newest: { name: string; time: string } }).newest;
    assert.equal(newest.name, 'app-quiesced');
    assert.equal(metricValue(mt, 'offsite_bookmark_newest_timestamp_seconds'), Date.parse(newest.time) / 1000);
    assert.match((await cli(replica, 'status')).stdout, new RegExp(`^bookmarks: +1, newest app-quiesced at sequence ${seq} `, 'm'));

    // A test failover at it shows the quiesced state (a coalesced batch would have refused it).
    r = await cli(replica, 'test-failover', '--bookmark', 'app-quiesced');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`as of sequence ${seq},`));
    assert.ok((await readVolume(replica, 'hot-test', path.join(dir, 'copy.img'))).equals(quiesced), 'the test copy at the bookmark differs from the quiesced state');
    assert.equal((await cli(replica, 'test-failover', '--stop')).code, 0);
    r = await cli(replica, 'test-failover', '--bookmark', 'nope');
    assert.match(r.stderr, /no bookmark 'nope' here.*BOOKMARK_UNKNOWN/);

    // The primary is lost; the replica is promoted at the bookmark.
    await primary.kill('SIGKILL');
    primary = undefined;
    r = await cli(replica, 'promote', '--bookmark', 'app-quiesced');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`writable at sequence ${seq} `));
    assert.ok((await readVolume(replica, 'hot', path.join(dir, 'promoted.img'))).equals(quiesced), 'the promoted volume differs from the quiesced state');
    // Offline, on the old primary's directory.
    const out = path.join(dir, 'replayed.img');
    r = await run(process.execPath, [CLI, 'replay', '--data', aDir, '--volume', 'hot', '--bookmark', 'app-quiesced', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(readFileSync(out).equals(quiesced), 'the replay at the bookmark differs from the quiesced state');
  } finally {
    await primary?.stop();
    await replica.stop();
    removeDir(dir);
  }
});
