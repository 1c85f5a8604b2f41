/**
 * `make test-faults`: the long proof run of issue 6, in three phases, then one summary:
 *   1. the fault campaign (≥ 1,000 injected faults by default) while writers run;
 *   2. the fuzz suite with OFFSITE_FUZZ_RUNS inputs (default 1,000,000), in its own process;
 *   3. the load run: 16 sessions over 8 volumes for 10 minutes while replicating.
 * The summary prints faults by kind, inputs fuzzed, sessions × minutes of load, and the three
 * numbers that must be zero (data lost, non-prefix states, crashes). Exit code 1 if any broke.
 *   node dist/test/faults/long.js [--faults N] [--seed S] [--fuzz-runs N] [--load-minutes M]
 * (--fuzz-runs 0 or --load-minutes 0 skips that phase; `make test-faults FAULTS=... FUZZ_RUNS=... LOAD_MINUTES=...`.)
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { formatResult, runCampaign, type CampaignResult } from './campaign';
import { formatLoad, runLoad, type LoadResult } from './load';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const num = (name: string, env: string, dflt: number): number => {
  const v = Number(arg(name) ?? process.env[env] ?? dflt);
  if (!Number.isFinite(v) || v < 0) throw new Error(`${name} ${String(arg(name) ?? process.env[env])} is not a number ≥ 0`);
  return v;
};
const say = (l: string) => process.stdout.write(`${l}\n`);

interface FuzzResult {
  inputs: number;
  byProperty: Map<string, number>;
  failed: number;
  exitCode: number | null;
}

/** The fuzz suite with OFFSITE_FUZZ_RUNS=runs, in a child `node --test`; inputs counted from its `fuzz <id>: <n> inputs` diagnostics. */
function runFuzz(runs: number, seed: number | undefined): Promise<FuzzResult> {
  const root = path.resolve(__dirname, '..');
  const files = [
    ...readdirSync(path.join(root, 'fuzz'))
      .filter((f) => f.endsWith('.test.js'))
      .map((f) => path.join(root, 'fuzz', f)),
    path.join(root, 'scsi', 'fuzz.test.js'),
  ];
  const env = { ...process.env, OFFSITE_FUZZ_RUNS: String(runs), ...(seed !== undefined ? { OFFSITE_FUZZ_SEED: String(seed) } : {}) };
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--test', '--test-reporter=tap', ...files], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    const byProperty = new Map<string, number>();
    let failed = 0;
    let rest = '';
    child.stdout.on('data', (d: Buffer) => {
      const lines = (rest + d.toString()).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        const m = /# fuzz ([^:]+): (\d+) inputs/.exec(line);
        if (m) {
          byProperty.set(m[1], (byProperty.get(m[1]) ?? 0) + Number(m[2]));
          say(`  ${line.trim()}`);
        }
        if (/^\s*not ok /.test(line) && !/# (TODO|SKIP)\b/.test(line)) {
          failed++;
          say(`  FUZZ FAILURE: ${line.trim()}`);
        }
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ inputs: [...byProperty.values()].reduce((a, b) => a + b, 0), byProperty, failed, exitCode: code }));
  });
}

async function main(): Promise<void> {
  const faults = num('--faults', 'OFFSITE_FAULTS', 1000);
  const seed = arg('--seed') ? Number(arg('--seed')) : undefined;
  const fuzzRuns = num('--fuzz-runs', 'OFFSITE_FUZZ_RUNS', 1_000_000);
  const loadMinutes = num('--load-minutes', 'OFFSITE_LOAD_MINUTES', 10);
  const started = Date.now();
  const minutes = (since: number) => ((Date.now() - since) / 60000).toFixed(1);
  const problems: string[] = [];

  let t = Date.now();
  let c: CampaignResult | undefined;
  if (faults > 0) {
    say(`== 1/3 fault campaign: ${faults} faults`);
    c = await runCampaign({ faults, seed, log: say });
    say(`${formatResult(c)}\n  ${minutes(t)} minutes`);
    problems.push(...c.problems);
  }

  let fuzz: FuzzResult | undefined;
  if (fuzzRuns > 0) {
    say(`== 2/3 fuzzing: ${fuzzRuns} inputs over the iSCSI PDU reader, login/text negotiation, SCSI CDB decoder, replication frame decoder and the listening ports`);
    t = Date.now();
    fuzz = await runFuzz(fuzzRuns, seed);
    say(`fuzzing: ${fuzz.inputs} inputs over ${fuzz.byProperty.size} properties, ${fuzz.failed} failed, ${minutes(t)} minutes`);
    if (fuzz.failed || fuzz.exitCode !== 0) problems.push(`fuzzing: ${fuzz.failed} failing tests (exit code ${String(fuzz.exitCode)})`);
  }

  let load: LoadResult | undefined;
  if (loadMinutes > 0) {
    say(`== 3/3 load: 16 sessions over 8 volumes for ${loadMinutes} minutes while replicating`);
    load = await runLoad({ sessions: 16, volumes: 8, seconds: loadMinutes * 60, log: say });
    say(formatLoad(load));
    problems.push(...load.problems.map((p) => `load: ${p}`));
    if (load.rssGrowthMiB.primary > 256 || load.rssGrowthMiB.replica > 256) problems.push(`load: memory grew by more than 256 MiB (${JSON.stringify(load.rssGrowthMiB)})`);
  }

  const kinds = c
    ? Object.entries(c.faults)
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')
    : '';
  const lost = (c?.lostWrites ?? 0) + (load ? load.verifyFailures : 0);
  const nonPrefix = c?.nonPrefixStates ?? 0;
  const crashes = c?.crashes ?? 0;
  say('');
  say(`== summary (${c ? `seed ${c.seed}, ` : ''}${minutes(started)} minutes)`);
  say(`  faults injected:  ${c ? `${c.faultsTotal} (${kinds}); ${c.recordsAcked} chain records acknowledged, ${c.replicaReads} replica reads checked, full resyncs ${c.fullResyncs}` : 'skipped'}`);
  say(`  inputs fuzzed:    ${fuzz ? `${fuzz.inputs} (${fuzz.failed} failing)` : 'skipped'}`);
  say(`  load:             ${load ? `${load.sessions} sessions x ${(load.seconds / 60).toFixed(1)} min over ${load.volumes} volumes, ${load.commands} commands, ${load.ioErrors} I/O errors, max RPO ${load.maxRpoSeconds.toFixed(2)} s` : 'skipped'}`);
  say(`  data lost:        ${lost}`);
  say(`  non-prefix states: ${nonPrefix}`);
  if (c || load) say(`  verify differences: ${(c?.verifyDifferences ?? 0) + (load?.verifyDifferences ?? 0)} (${c?.verifyRuns ?? 0} online verify runs during the faults, ${load?.verifyRuns ?? 0} during the load)`);
  say(`  crashes:          ${crashes}`);
  for (const p of problems) say(`  PROBLEM: ${p}`);
  process.exit(problems.length || lost || nonPrefix || crashes || c?.verifyDifferences || load?.verifyDifferences ? 1 : 0);
}

main().catch((e: unknown) => {
  process.stderr.write(`fault campaign failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
