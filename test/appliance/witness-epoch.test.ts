/**
 * src/appliance/witness.ts (epochs) and the primary's lease keeper (appliance.ts): once the
 * witness has given the lease to another site, the site that held it before never gets it back
 * by renewing, not even after the new holder's lease has run out (a promotion slow to renew).
 * Only a claim (a replica taking over, a site just promoted) may take an expired lease. A primary
 * keeps its epochs in its data directory, so a restart does not turn its renewal into a claim.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { LeaseBook, requestLease, requestQuorumLease, startWitness } from '../../src/appliance/witness';
import { createLogger } from '../../src/ops/logging';
import { removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { until } from '../helpers/wait';

test('a renewal under an epoch the lease has moved on from is refused (superseded), even once the new holder\'s lease ran out; a claim is not', () => {
  const book = new LeaseBook(1000, 0, 'w1');
  const a = book.request('site-a', 'primary', 0);
  assert.ok(a.granted);
  const ea = a.lease.epoch;
  assert.equal(ea, 'w1:1');
  // Renewals keep the epoch.
  const again = book.request('site-a', 'primary', 500, ea);
  assert.ok(again.granted && again.lease.epoch === ea);
  // A's lease runs out; B takes over with a claim: a new epoch.
  assert.deepEqual(book.request('site-b', 'replica', 1000), { granted: false, holder: book.holder });
  const b = book.request('site-b', 'replica', 1501);
  assert.ok(b.granted && b.takeover && b.lease.epoch === 'w1:2');
  // B's lease runs out too (its promotion is slow). A, renewing, is refused; B's claim as primary is its own renewal.
  const late = book.request('site-a', 'primary', 5000, ea);
  assert.ok(!late.granted && 'holder' in late && late.superseded === true && late.holder.siteId === 'site-b');
  assert.equal(book.holder?.siteId, 'site-b');
  const bp = book.request('site-b', 'primary', 5001);
  assert.ok(bp.granted && !bp.takeover && bp.lease.epoch === 'w1:2');
  // An epoch from another incarnation of the witness (it restarted) counts as a claim.
  const other = new LeaseBook(1000, 0, 'w2');
  const c = other.request('site-a', 'primary', 0, ea);
  assert.ok(c.granted && c.lease.epoch === 'w2:1');
  // A claim takes an expired lease (a promoted site).
  const d = book.request('site-a', 'primary', 9000);
  assert.ok(d.granted && d.takeover && d.lease.epoch === 'w1:3');
});

test('several witnesses: an old primary cannot gather a new majority through a witness that gave it no epoch but another site held since', async () => {
  const logger = createLogger('silent');
  const ws = await Promise.all([0, 1, 2].map(() => startWitness('127.0.0.1', 0, { leaseMs: 800, logger, quietMs: 0 })));
  const at = ws.map((w) => `127.0.0.1:${w.address.port}`);
  try {
    // A holds the lease through the first two (the third unreachable for it): its epochs name those two.
    const a = await requestQuorumLease(at.slice(0, 2).concat('127.0.0.1:1'), 'site-a', 'primary', 500, undefined, undefined, 800);
    assert.equal(a.answer?.granted, true);
    assert.deepEqual(Object.keys(a.epochs).sort(), at.slice(0, 2).sort());
    // A is cut off; its leases run out; B takes over through the second and the third.
    await new Promise((res) => setTimeout(res, 900));
    const b = await requestQuorumLease(['127.0.0.1:1', at[1], at[2]], 'site-b', 'replica', 500, undefined, undefined, 800);
    assert.equal(b.answer?.granted, true);
    // B falls silent; its leases run out too. A asks everywhere, renewing.
    await new Promise((res) => setTimeout(res, 900));
    const again = await requestQuorumLease(at, 'site-a', 'primary', 500, undefined, undefined, 800, a.epochs);
    assert.equal(again.answer?.granted, false, `the old primary got a majority back: ${JSON.stringify(again.votes)}`);
    assert.equal(again.answer?.superseded, true);
    assert.deepEqual(again.votes.map((v) => v.vote), ['granted', 'refused', 'refused']);
    assert.ok(again.votes[2].superseded, 'the witness that never gave A an epoch refused it as superseded');
    // A claim (a site just promoted, no epochs) may still take the expired lease there.
    assert.equal((await requestLease(at[2], 'site-c', 'primary', 500))?.granted, true);
  } finally {
    await Promise.all(ws.map((w) => w.close()));
  }
});

test('a primary restarted after another site took the lease over stays fenced though that site\'s lease ran out', { timeout: 60_000 }, async () => {
  process.env.OFFSITE_WITNESS_LEASE_MS = '1000';
  const dir = tempDir();
  const witness = await startWitness('127.0.0.1', 0, { leaseMs: 1000, logger: createLogger('silent'), quietMs: 0 });
  const at = `127.0.0.1:${witness.address.port}`;
  const dataDir = path.join(dir, 'a');
  const args = ['--witness', at];
  type W = { witness: { fenced: boolean; takenOver: boolean; reason: string } };
  let a = await startAppliance({ dataDir, volumes: ['v:1M'], args });
  try {
    await until('the primary to hold the lease', async () => !((await a.status()) as W).witness.fenced, 15_000, 100);
    const epochsFile = path.join(dataDir, 'state', 'witness-epochs.json');
    assert.ok(existsSync(epochsFile), 'the epoch is kept in the data directory');
    assert.equal((JSON.parse(readFileSync(epochsFile, 'utf8')) as { epochs: Record<string, string> }).epochs[at], witness.book.holder?.epoch);
    let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 4k', a.url('v')]);
    assert.equal(r.code, 0, r.stderr);
    await a.stop();
    // A's lease runs out; the replica takes over, then falls silent (a slow promotion) and its lease runs out too.
    await until('the lease to run out', async () => (await requestLease(at, 'site-b', 'replica', 1000))?.granted === true, 10_000, 100);
    await new Promise((res) => setTimeout(res, 1300));
    a = await startAppliance({ dataDir, volumes: ['v:1M'], args });
    await until('the primary to hear from the witness', async () => ((await a.status()) as W).witness.takenOver, 10_000, 100);
    const st = (await a.status()) as W;
    assert.equal(st.witness.fenced, true);
    assert.match(st.witness.reason, /taken over by site-b/);
    assert.equal(witness.book.holder?.siteId, 'site-b', 'the witness did not hand the lease back');
    r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 8 0 4k', a.url('v')]);
    assert.notEqual(r.code, 0, 'the old primary accepted a write after the lease passed to another site');
    assert.equal(witness.stats().refused.superseded > 0, true);
  } finally {
    await a.stop();
    await witness.close();
    delete process.env.OFFSITE_WITNESS_LEASE_MS;
    removeDir(dir);
  }
});
