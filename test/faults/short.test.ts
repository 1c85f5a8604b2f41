/** The short fault campaign inside `make test` (the long one is `make test-faults`). */
import assert from 'node:assert/strict';
import test from 'node:test';
import { formatResult, runCampaign } from './campaign';

test('fault campaign (short): kills, restarts, cuts, stalls, slow, duplicated and corrupted links, paused shipping, volumes grown, added and removed online lose nothing (the replica retires a removed volume only after its last write, equal to the primary copy); online verify never sees a difference; test copies at an earlier point or a bookmark are chain prefixes', { timeout: 600_000 }, async () => {
  const faults = Number(process.env.OFFSITE_SHORT_FAULTS ?? 24);
  const seed = process.env.OFFSITE_FAULT_SEED ? Number(process.env.OFFSITE_FAULT_SEED) : undefined;
  const r = await runCampaign({ faults, seed, log: (l) => process.stdout.write(`${l}\n`) });
  process.stdout.write(`# ${formatResult(r).split('\n').join('\n# ')}\n`);
  assert.deepEqual(r.problems, [], `seed ${r.seed}`);
  assert.equal(r.lostWrites, 0);
  assert.equal(r.nonPrefixStates, 0);
  assert.equal(r.crashes, 0);
  assert.equal(r.fullResyncs, 0);
  assert.ok(r.imagesEqual);
  assert.equal(r.verifyDifferences, 0);
  assert.ok(r.verifyRuns > 0, 'online verify completed runs during the faults');
  assert.ok(r.replicaReads > 0 && r.recordsAcked > faults * 10, `acked ${r.recordsAcked}, reads ${r.replicaReads}`);
});
