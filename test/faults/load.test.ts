/** The short load run inside `make test` (the long one: make test-load, 16 sessions x 8 volumes x 10 minutes). */
import assert from 'node:assert/strict';
import test from 'node:test';
import { formatLoad, runLoad } from './load';

test('load (short): concurrent sessions over several volumes while replicating, online verify meanwhile', { timeout: 300_000 }, async () => {
  const r = await runLoad({ sessions: 8, volumes: 4, seconds: Number(process.env.OFFSITE_LOAD_SECONDS ?? 20), log: (l) => process.stdout.write(`${l}\n`) });
  process.stdout.write(`# ${formatLoad(r).split('\n').join('\n# ')}\n`);
  assert.deepEqual(r.problems, []);
  assert.equal(r.ioErrors, 0);
  assert.ok(r.imagesEqual);
  assert.equal(r.verifyDifferences, 0);
  assert.ok(r.verifiedBytes > 0, 'online verify compared data during the load');
  assert.ok(r.commands > 100, `${r.commands} commands`);
  // Bounded memory: growth after warm-up stays small (no per-command leak).
  assert.ok(r.rssGrowthMiB.primary < 128 && r.rssGrowthMiB.replica < 128, JSON.stringify(r.rssGrowthMiB));
});
