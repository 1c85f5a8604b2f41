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
  } finally {
    await app.stop();
  }
});
