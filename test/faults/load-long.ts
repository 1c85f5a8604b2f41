/** `make test-load`: 16 sessions over 8 volumes for 10 minutes while replicating (override with --sessions/--volumes/--minutes). */
import { formatLoad, runLoad } from './load';

const arg = (n: string, d: number) => {
  const i = process.argv.indexOf(n);
  return i > 0 ? Number(process.argv[i + 1]) : d;
};

runLoad({ sessions: arg('--sessions', 16), volumes: arg('--volumes', 8), seconds: arg('--minutes', 10) * 60, log: (l) => process.stdout.write(`${l}\n`) }).then(
  (r) => {
    process.stdout.write(`${formatLoad(r)}\n`);
    for (const p of r.problems) process.stdout.write(`  PROBLEM: ${p}\n`);
    process.exit(r.problems.length || r.rssGrowthMiB.primary > 256 || r.rssGrowthMiB.replica > 256 ? 1 : 0);
  },
  (e: unknown) => {
    process.stderr.write(`load run failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
