/**
 * Exit codes: 2 for configuration and usage errors, whether Commander finds them (an unknown
 * option) or a command does (options that do not go together, a time that does not parse, a
 * command told nothing to do); 1 for failures at run time.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';

const offsite = (args: string[]) => run(process.execPath, [CLI, ...args], { timeoutMs: 30_000 });

test('usage errors exit 2 like parse errors; run-time failures exit 1', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  try {
    // A stopped appliance's data directory, so that replay gets past opening it where it must.
    const app = await startAppliance({ dataDir: data, volumes: ['v:1M'] });
    assert.equal(await app.stop(), 0);
    const out = path.join(dir, 'out.img');
    for (const [args, pattern] of [
      [['replay', '--data', data, '--volume', 'v', '--out', out, '--no-such-option'], /unknown option/],
      [['replay', '--data', data, '--volume', 'v', '--out', out, '--time', 'garbage'], /--time garbage is not an ISO-8601 time \[USAGE\]/],
      [['replay', '--data', data, '--volume', 'v', '--out', out, '--seq', '0', '--time', '2026-01-01T00:00:00Z'], /--seq and --time are mutually exclusive \[USAGE\]/],
      [['keygen'], /say what to create.*\[USAGE\]/],
      [['demote', '--http', '127.0.0.1:1', '--replication-listen', 'nowhere'], /--replication-listen: 'nowhere' is not HOST:PORT/],
    ] as [string[], RegExp][]) {
      const r = await offsite(args);
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr, pattern, args.join(' '));
    }
    // A failure at run time, not a usage error.
    const r = await offsite(['replay', '--data', data, '--volume', 'missing', '--out', out]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /\[VOLUME_NOT_FOUND\]/);
  } finally {
    removeDir(dir);
  }
});
