/**
 * Several witnesses (--witness A,B,C): a site holds the lease when a majority grant it, is held
 * off when a majority refuse, and has no usable answer otherwise. Two sites never both hold a
 * majority. Then the configuration rules.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { resolveConfig } from '../../src/appliance/config';
import { ConfigError } from '../../src/common/errors';
import { requestLease, requestQuorumLease, startWitness, witnessMajority } from '../../src/appliance/witness';
import { createLogger } from '../../src/ops/logging';

const KEY = Buffer.from('a-witness-key-of-at-least-32-characters');
const LEASE_MS = 1500;

test('a quorum of witnesses: majority grants hold the lease, majority refusals hold it off, anything less is no answer', { timeout: 30_000 }, async () => {
  assert.deepEqual([1, 2, 3, 4, 5, 7].map(witnessMajority), [1, 2, 2, 3, 3, 4]);
  const logger = createLogger('silent');
  const ws = await Promise.all([0, 1, 2].map(() => startWitness('127.0.0.1', 0, { leaseMs: LEASE_MS, quietMs: 0, logger, key: KEY })));
  const addrs = ws.map((w) => `127.0.0.1:${w.address.port}`);
  const problems: string[] = [];
  const ask = (site: string, role: string) => requestQuorumLease(addrs, site, role, 1000, KEY, (p) => problems.push(p));
  try {
    // The replica got one witness (say, the only one it could reach) before the primary asked.
    assert.equal((await requestLease(addrs[2], 'site-b', 'replica', 1000, KEY))?.granted, true);
    let r = await ask('site-a', 'primary');
    assert.deepEqual(r.answer, { granted: true }, 'two of three grant: the primary holds the lease');
    assert.deepEqual(r.votes.map((v) => v.vote), ['granted', 'granted', 'refused']);
    assert.equal(r.votes[2].holder, 'site-b');
    // The replica cannot reach a majority while the primary renews.
    r = await ask('site-b', 'replica');
    assert.deepEqual(r.answer, { granted: false, holder: 'site-a', expiresInMs: r.answer?.expiresInMs });
    assert.ok((r.answer?.expiresInMs ?? 0) > 0);

    // One witness down: the primary still holds the lease and is told which one is missing.
    await ws[0].close();
    problems.length = 0;
    r = await ask('site-a', 'primary');
    assert.equal(r.answer, undefined, 'one grant, one refusal, one silent: no quorum either way');
    assert.deepEqual(r.votes.map((v) => v.vote), ['none', 'granted', 'refused']);
    assert.ok(problems.some((p) => p.startsWith(`witness ${addrs[0]} unreachable`)), problems.join('\n'));
    assert.ok(problems.some((p) => p === 'witness quorum not reached: 1 of 3 granted, 1 refused, 1 gave no usable answer (2 must agree)'), problems.join('\n'));

    // The primary stops renewing; once its lease has run out at the middle witness the replica
    // holds two of three, and the primary, asking again, learns it was taken over.
    await new Promise((res) => setTimeout(res, LEASE_MS + 200));
    r = await ask('site-b', 'replica');
    assert.deepEqual(r.answer, { granted: true });
    r = await ask('site-a', 'primary');
    assert.equal(r.answer?.granted, false);
    assert.equal(r.answer?.holder, 'site-b');
  } finally {
    await Promise.all(ws.map((w) => w.close()));
  }
});

test('witness configuration: a comma-separated list (or a list in the file); duplicates and more than seven refused', () => {
  const base = { data: '/tmp/x' };
  const env = { OFFSITE_ADMIN_TOKEN: 'witness-quorum-test-token-0123456789' };
  let c = resolveConfig({}, { ...base, witness: '10.0.0.1:7790, 10.0.0.2:7790,10.0.0.3:7790' }, env);
  assert.deepEqual(c.witness?.addresses, ['10.0.0.1:7790', '10.0.0.2:7790', '10.0.0.3:7790']);
  assert.equal(c.witness?.address, '10.0.0.1:7790,10.0.0.2:7790,10.0.0.3:7790');
  c = resolveConfig({ witness: { address: ['w1:7790', 'w2:7790', 'w3:7790'] } }, base, env);
  assert.deepEqual(c.witness?.addresses, ['w1:7790', 'w2:7790', 'w3:7790']);
  c = resolveConfig({}, { ...base, witness: 'w1:7790' }, env);
  assert.deepEqual(c.witness?.addresses, ['w1:7790']);
  assert.throws(() => resolveConfig({}, { ...base, witness: 'w1:7790,w2:7790,w1:7790' }, env), (e: unknown) => e instanceof ConfigError && /names a witness twice/.test(e.message));
  assert.throws(() => resolveConfig({}, { ...base, witness: 'w1:7790,w2' }, env), (e: unknown) => e instanceof ConfigError && /'w2' is not HOST:PORT/.test(e.message));
  const eight = Array.from({ length: 8 }, (_, i) => `w${i}:7790`).join(',');
  assert.throws(() => resolveConfig({}, { ...base, witness: eight }, env), (e: unknown) => e instanceof ConfigError && /at most 7 witnesses \(8 given\)/.test(e.message));
});
