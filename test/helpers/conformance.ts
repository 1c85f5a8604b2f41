/** Parsing libiscsi's `iscsi-test-cu` verbose output into one verdict per test. */

export type Verdict = 'passed' | 'failed' | 'skipped';

export interface ConformanceRun {
  results: Map<string, Verdict>;
  counts: Record<Verdict, number>;
}

/**
 * Output is "Suite: NAME" then "  Test: NAME ...<text>" blocks; a test failed when its block has
 * CUnit's "FAILED" line or assertion lines ("    1. file.c:NN  - ..."), was skipped when it printed
 * [SKIPPED], and passed otherwise. Names are "Suite.Test".
 */
export function parseConformance(output: string): ConformanceRun {
  const results = new Map<string, Verdict>();
  let suite = '';
  let current: string | undefined;
  let block: string[] = [];
  const finish = () => {
    if (!current) return;
    const text = block.join('\n');
    const failed = /^FAILED\s*$/m.test(text) || /\.\.\.\s*FAILED/.test(text) || /^\s+\d+\. \S+:\d+\s+- /m.test(text);
    const verdict: Verdict = failed ? 'failed' : /\[SKIPPED\]/.test(text) ? 'skipped' : 'passed';
    results.set(current, verdict);
    current = undefined;
    block = [];
  };
  for (const line of output.split('\n')) {
    const s = /^Suite: (\S+)/.exec(line);
    if (s) {
      finish();
      suite = s[1];
      continue;
    }
    const t = /^  Test: (\S+) \.\.\.(.*)$/.exec(line);
    if (t) {
      finish();
      current = `${suite}.${t[1]}`;
      block = [t[2]];
      continue;
    }
    if (/^Run Summary:/.test(line)) {
      finish();
      continue;
    }
    if (current) block.push(line);
  }
  finish();
  const counts: Record<Verdict, number> = { passed: 0, failed: 0, skipped: 0 };
  for (const v of results.values()) counts[v]++;
  return { results, counts };
}
