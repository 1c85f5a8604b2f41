/** The real appliance driven by real initiators: libiscsi's tools and qemu. */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { removeDir, startAppliance, tempDir, TARGET_PREFIX } from '../helpers/appliance';
import { run } from '../helpers/exec';

const MiB = 1024 * 1024;

test('discovery, inquiry, qemu-img and qemu-io read/write, data kept across a restart', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  let app = await startAppliance({ dataDir: data, volumes: ['vol1:64M', 'vol2:32M'] });
  try {
    const ls = await run('iscsi-ls', ['-s', `iscsi://127.0.0.1:${app.iscsiPort}`]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`Target:${TARGET_PREFIX}:vol1 Portal:127\\.0\\.0\\.1:${app.iscsiPort},1`));
    assert.match(ls.stdout, new RegExp(`Target:${TARGET_PREFIX}:vol2 `));
    // iscsi-ls prints last LBA x block size (one block short; tgt shows the same), so 64M -> 63M.
    assert.match(ls.stdout, /Lun:0\s+Type:DIRECT_ACCESS \(Size:63M\)/);
    assert.match(ls.stdout, /Lun:0\s+Type:DIRECT_ACCESS \(Size:31M\)/);

    const inq = await run('iscsi-inq', [app.url('vol1')]);
    assert.equal(inq.code, 0, inq.stderr);
    assert.match(inq.stdout, /Vendor:OFFSITE/);

    const info = await run('qemu-img', ['info', '--output=json', app.url('vol2')]);
    assert.equal(info.code, 0, info.stderr);
    assert.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], 32 * MiB);

    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 1M 4k', '-c', 'write -P 0x5a 63M 1M', '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 1M 4k', '-c', 'read -P 0 2M 64k', app.url('vol1')]);
    assert.equal(io.code, 0, io.stderr);
    assert.doesNotMatch(io.stdout + io.stderr, /Pattern verification failed|error|failed/i);
    assert.equal(await app.stop(), 0);

    app = await startAppliance({ dataDir: data, volumes: [] });
    const check = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 1M 4k', '-c', 'read -P 0x5a 63M 1M', app.url('vol1')]);
    assert.equal(check.code, 0, check.stderr);
    assert.doesNotMatch(check.stdout + check.stderr, /Pattern verification failed|error|failed/i);
    // The negative control: a wrong pattern is detected, so the checks above can fail.
    const wrong = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xee 0 4k', app.url('vol1')]);
    assert.match(wrong.stdout + wrong.stderr, /Pattern verification failed/);
  } finally {
    await app.stop();
    removeDir(dir);
  }
});

test('a write beyond the end and a read of a missing LUN fail cleanly; the appliance keeps serving', async () => {
  const dir = tempDir();
  const app = await startAppliance({ dataDir: path.join(dir, 'data'), volumes: ['small:4M'] });
  try {
    const past = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 4M 4k', app.url('small')]);
    assert.match(past.stdout + past.stderr, /error|Input\/output|out of range|Invalid argument/i);
    const missing = await run('iscsi-inq', [app.url('small', 3)]);
    assert.notEqual(missing.code, 0);
    const ok = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 4k', '-c', 'read -P 7 0 4k', app.url('small')]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.doesNotMatch(ok.stdout, /verification failed/);
  } finally {
    await app.stop();
    removeDir(dir);
  }
});
