/**
 * `make test-faults`: the long fault campaign (≥ 1,000 injected faults by default), printed as
 * counts by kind and the three numbers that must be zero. Exit code 1 if any invariant broke.
 *   node dist/test/faults/long.js [--faults N] [--seed S]
 */
import { formatResult, runCampaign } from './campaign';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};

async function main(): Promise<void> {
  const faults = Number(arg('--faults') ?? process.env.OFFSITE_FAULTS ?? 1000);
  const seed = arg('--seed') ? Number(arg('--seed')) : undefined;
  const started = Date.now();
  const r = await runCampaign({ faults, seed, log: (l) => process.stdout.write(`${l}\n`) });
  process.stdout.write(`${formatResult(r)}\n  ${((Date.now() - started) / 60000).toFixed(1)} minutes\n`);
  for (const p of r.problems) process.stdout.write(`  PROBLEM: ${p}\n`);
  process.exit(r.problems.length ? 1 : 0);
}

main().catch((e: unknown) => {
  process.stderr.write(`fault campaign failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
