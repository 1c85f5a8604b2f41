/**
 * src/appliance/replication.ts and src/journal/wal.ts under a stepped wall clock (an appliance
 * that started before NTP corrected its clock, an operator's `date -s`): the RPO is the age of
 * the oldest write the replica lacks, measured on the monotonic clock. Set back an hour, the
 * primary went on reporting 0 s (the write looked an hour younger than now); set forward, it
 * reported an hour and missed its target at once. Record times stay in order (a later record
 * never carries an earlier time), so a point in time still names one point.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { ADMIN_TOKEN, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { freePort, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';

const HOUR = 3_600_000;
const PRELOAD = path.join(__dirname, '..', 'helpers', 'clock-step-preload.js');

test('a stepped wall clock moves no RPO: set back, the RPO of a write the replica lacks keeps growing; set forward, it does not jump; record times stay in order', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  const clockFile = path.join(dir, 'clock-shift-ms');
  writeFileSync(clockFile, '0');
  const env = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${PRELOAD}`.trim(), OFFSITE_TEST_CLOCK_FILE: clockFile };
  // Nothing listens there until the end: the replica lacks every write meanwhile.
  const replPort = await freePort();
  const primary = await startPrimary(path.join(dir, 'a'), ['v:64M'], replPort, ['--rpo-target', '30s'], env);
  let replica: RunningAppliance | undefined;
  const step = async (ms: number): Promise<void> => {
    writeFileSync(clockFile, String(ms));
    primary.proc.kill('SIGUSR2');
    const applied = `${clockFile}.applied`;
    await until(`the primary's clock to be shifted by ${ms} ms`, () => Promise.resolve(existsSync(applied) && readFileSync(applied, 'utf8') === String(ms)), 10_000, 50);
  };
  const write = async (offset: string): Promise<void> => {
    const r = await run('qemu-io', ['-f', 'raw', '-c', `write -P 7 ${offset} 64k`, primary.url('v')]);
    assert.equal(r.code, 0, r.stderr);
  };
  const rpo = async (): Promise<number> => Number((await primary.status()).rpoSeconds);
  const newestTime = async (): Promise<number> => Date.parse(String(((await primary.status()).journal as { window: { toTime: string } }).window.toTime));
  /** The RPO is the age of the first write, by the test's clock (never stepped). */
  const checkRpo = async (firstWriteAt: number, when: string): Promise<void> => {
    const got = await rpo();
    const age = (Date.now() - firstWriteAt) / 1000;
    assert.ok(got >= age - 0.5 && got <= age + 5, `${when}: RPO ${got} s, but the replica lacks a write made ${age.toFixed(1)} s ago`);
  };
  try {
    await write('0');
    const firstWriteAt = Date.now();
    const firstTime = await newestTime();
    await until('the RPO to count from the first write', async () => (await rpo()) >= 2, 20_000, 200);

    // Set back an hour. A write after it shows the step took effect (the journal logs it).
    await step(-HOUR);
    await write('1M');
    await until('the journal to see the clock set back', () => Promise.resolve(primary.logs.some((l) => /wall clock is behind the newest record/.test(String(l.msg)))), 10_000, 100);
    assert.ok((await newestTime()) >= firstTime, 'the record written after the step is not stamped before the first one');
    // A bookmark names the point after both: its time is not before theirs either.
    const res = await fetch(`http://127.0.0.1:${primary.httpPort}/bookmarks`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'after-step' }) });
    assert.equal(res.status, 201, await res.clone().text());
    const bookmark = (await res.json()) as { time: string };
    assert.ok(Date.parse(bookmark.time) >= firstTime, `bookmark at ${bookmark.time}, before the records it names`);
    await new Promise((r) => setTimeout(r, 1500));
    await checkRpo(firstWriteAt, 'an hour set back');

    // Forward to an hour ahead of the real time: the newest record follows the clock.
    await step(HOUR);
    await write('2M');
    await until('a record stamped on the clock set forward', async () => (await newestTime()) >= firstTime + HOUR - 60_000, 10_000, 100);
    await new Promise((r) => setTimeout(r, 1500));
    await checkRpo(firstWriteAt, 'an hour set forward');
    assert.ok(!primary.logs.some((l) => l.msg === 'RPO target missed'), 'a clock step alone misses no RPO target');

    // Set back again, an hour behind the real time, with writes waiting that are stamped two
    // hours ahead of the clock, and the replica comes: everything arrives (a shipper that waited
    // for a fuller segment until the clock reached those stamps sent nothing), the RPO falls to 0.
    await step(-HOUR);
    await write('3M');
    assert.ok((await newestTime()) >= firstTime + HOUR - 60_000, 'the newest record keeps the time of the one before it');
    replica = await startReplica(path.join(dir, 'b'), replPort);
    await waitCaughtUp(primary, replica, 60_000);
    await until('the RPO to fall to 0', async () => (await rpo()) === 0, 10_000, 100);
  } finally {
    await replica?.stop();
    await primary.stop();
    removeDir(dir);
  }
});
