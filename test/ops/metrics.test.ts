/** /metrics of a running appliance after real initiator I/O: promtool-clean and counting what happened. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import test from 'node:test';
import { startAppliance } from '../helpers/appliance';
import { have, run } from '../helpers/exec';

test('metrics: promtool check metrics is clean and I/O shows up in offsite_* series', async () => {
  assert.ok(have('promtool'), 'promtool must be installed: make test installs it');
  const app = await startAppliance({ volumes: ['m1:16M'] });
  try {
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 256k', '-c', 'read -P 0x33 0 256k', app.url('m1')]);
    assert.equal(io.code, 0, io.stderr);
    const text = await (await fetch(`http://127.0.0.1:${app.httpPort}/metrics`)).text();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    assert.equal(value(/^offsite_scsi_written_bytes_total\{volume="m1"\} (\d+)/m), 256 * 1024);
    assert.equal(value(/^offsite_scsi_read_bytes_total\{volume="m1"\} (\d+)/m), 256 * 1024);
    assert.ok(value(/^offsite_scsi_commands_total\{volume="m1",op="WRITE_\d+"\} (\d+)/m) >= 1);
    assert.ok(value(/^offsite_scsi_command_duration_seconds_count\{volume="m1",class="write"\} (\d+)/m) >= 1);
    assert.ok(value(/^offsite_iscsi_events_total\{event="logins"\} (\d+)/m) >= 1);
    assert.equal(value(/^offsite_volume_size_bytes\{volume="m1"\} (\d+)/m), 16 * 1024 * 1024);
    assert.match(text, /^offsite_process_resident_memory_bytes \d+/m);
    // The command's buffers came from the pool, which was empty, and went back to it.
    assert.ok(value(/^offsite_buffer_pool_allocations_total (\d+)/m) >= 1);
    assert.ok(value(/^offsite_buffer_pool_bytes (\d+)/m) >= 256 * 1024);
    assert.equal(value(/^offsite_buffer_pool_evicted_bytes_total (\d+)/m), 0);
    // No witness, no replication here: their gauges have no series, rather than a 0 that alert
    // rules read as a state (offsite_witness_reachable == 0 is OffsiteWitnessUnreachable).
    for (const name of ['offsite_witness_reachable', 'offsite_witnesses', 'offsite_witnesses_answering', 'offsite_fenced', 'offsite_link_up', 'offsite_rpo_seconds', 'offsite_replica_consistent']) {
      assert.doesNotMatch(text, new RegExp(`^${name}[ {]`, 'm'), `${name} has a sample at a site without it`);
    }
    // Gauges that do apply still have theirs.
    assert.match(text, /^offsite_journal_head_sequence \d+$/m);
    assert.match(text, /^offsite_replication_configured 0$/m);
  } finally {
    await app.stop();
  }
});

test('metrics: the command latency histogram counts each command in the right bucket, cumulatively', async () => {
  const { createMetrics } = await import('../../src/ops/metrics');
  const m = createMetrics();
  const done = m.hooks.onCommandComplete!;
  done('v1', 'WRITE_10', 0, 100_000n); // 0.0001 s: on a bound, so inside it
  done('v1', 'WRITE_16', 0, 100_001n);
  done('v1', 'UNMAP', 0, 3_000_000_000n); // past the last bound: +Inf only
  done('v1', 'READ_10', 0, 10_000n);
  done('v2', 'WRITE_10', 0, 1_000_000n);
  const text = await m.registry.metrics();
  const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(check.status, 0, check.stdout + check.stderr);
  const series = (volume: string, cls: string) => {
    const buckets = new Map<string, number>();
    for (const [, le, n] of text.matchAll(new RegExp(`^offsite_scsi_command_duration_seconds_bucket\\{volume="${volume}",class="${cls}",le="([^"]+)"\\} (\\S+)$`, 'gm'))) buckets.set(le, Number(n));
    const one = (what: string) => Number(new RegExp(`^offsite_scsi_command_duration_seconds_${what}\\{volume="${volume}",class="${cls}"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    return { buckets, sum: one('sum'), count: one('count') };
  };
  const w1 = series('v1', 'write');
  assert.equal(w1.count, 3);
  assert.equal(w1.buckets.get('0.00005'), 0);
  assert.equal(w1.buckets.get('0.0001'), 1);
  assert.equal(w1.buckets.get('0.00025'), 2);
  assert.equal(w1.buckets.get('2.5'), 2);
  assert.equal(w1.buckets.get('+Inf'), 3);
  assert.ok(Math.abs(w1.sum - (0.0001 + 0.000100001 + 3)) < 1e-9, String(w1.sum));
  const values = [...w1.buckets.values()];
  assert.equal(values.length, 16);
  assert.ok(values.every((n, i) => i === 0 || n >= values[i - 1]), 'buckets are cumulative');
  const r1 = series('v1', 'read');
  assert.deepEqual([r1.count, r1.buckets.get('0.00005'), r1.buckets.get('+Inf')], [1, 1, 1]);
  const w2 = series('v2', 'write');
  assert.deepEqual([w2.count, w2.buckets.get('0.0005'), w2.buckets.get('0.001')], [1, 0, 1]);
});
