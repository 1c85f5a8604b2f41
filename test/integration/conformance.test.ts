/**
 * libiscsi's own conformance suite (iscsi-test-cu -d -t ALL) against the real appliance, and the
 * same suite against Debian's tgtd on the same machine for comparison.
 *
 * CI stays honest while the target is unfinished: conformance-known-failures.txt lists the cases
 * that still fail. A case failing that is not on the list fails this test; the list may only shrink.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { startAppliance, tempDir, removeDir } from '../helpers/appliance';
import { parseConformance, type ConformanceRun } from '../helpers/conformance';
import { have, run } from '../helpers/exec';
import { startTgt } from '../helpers/tgt';

const KNOWN = path.resolve(__dirname, '../../../test/integration/conformance-known-failures.txt');

function knownFailures(): Set<string> {
  return new Set(
    readFileSync(KNOWN, 'utf8')
      .split('\n')
      .map((l) => l.replace(/#.*/, '').trim())
      .filter(Boolean),
  );
}

async function conformance(url: string): Promise<{ run: ConformanceRun; output: string }> {
  const r = await run('iscsi-test-cu', ['-d', '-t', 'ALL', url], { timeoutMs: 540_000 });
  const output = r.stdout + r.stderr;
  return { run: parseConformance(output), output };
}

test('libiscsi iscsi-test-cu ALL against offsite (and tgt for comparison)', { timeout: 900_000 }, async (t) => {
  assert.ok(have('iscsi-test-cu'), 'iscsi-test-cu (libiscsi-bin) must be installed: make test installs it');
  const dir = tempDir();
  const app = await startAppliance({ dataDir: path.join(dir, 'data'), volumes: ['conf:256M', 'conf2:256M'] });
  let ours: ConformanceRun;
  try {
    const res = await conformance(app.url('conf'));
    ours = res.run;
    assert.ok(ours.results.size > 200, `expected the full suite to run, parsed ${ours.results.size} tests; output tail:\n${res.output.slice(-2000)}`);
    assert.equal(app.proc.exitCode, null, 'the appliance must survive the conformance suite');
    const status = await app.status();
    assert.equal((status.volumes as unknown[]).length, 2);
  } finally {
    await app.stop();
  }

  let tgtCounts: ConformanceRun['counts'] | undefined;
  if (have('tgtd')) {
    const tgt = await startTgt(path.join(dir, 'tgt.img'), 256 * 1024 * 1024);
    try {
      tgtCounts = (await conformance(tgt.url)).run.counts;
    } finally {
      await tgt.stop();
    }
  }
  removeDir(dir);

  const known = knownFailures();
  const failed = [...ours.results].filter(([, v]) => v === 'failed').map(([k]) => k);
  const unexpected = failed.filter((k) => !known.has(k));
  const nowPassing = [...known].filter((k) => ours.results.get(k) !== 'failed');
  t.diagnostic(`offsite: ${ours.counts.passed} passed, ${ours.counts.failed} failed, ${ours.counts.skipped} skipped of ${ours.results.size}`);
  if (tgtCounts) t.diagnostic(`tgt:     ${tgtCounts.passed} passed, ${tgtCounts.failed} failed, ${tgtCounts.skipped} skipped`);
  if (nowPassing.length) t.diagnostic(`no longer failing, remove from ${path.basename(KNOWN)}: ${nowPassing.join(', ')}`);
  assert.deepEqual(unexpected, [], `conformance cases failing that are not in ${path.basename(KNOWN)}`);
  if (known.size === 0 && tgtCounts) {
    assert.ok(ours.counts.passed >= tgtCounts.passed, `offsite passes ${ours.counts.passed}, tgt ${tgtCounts.passed}`);
  }
});
