/** `offsite serve`: volumes created and reopened, clear errors and exit codes, /status, SIGTERM. */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';

const serve = (args: string[]) => run(process.execPath, [CLI, 'serve', '--iscsi', '127.0.0.1:0', '--http', '127.0.0.1:0', ...args], { timeoutMs: 30_000 });

test('volumes are sparse files created on first start, reopened later; /status reports them; SIGTERM exits 0', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  const app = await startAppliance({ dataDir: data, volumes: ['alpha:64M', 'beta:1G'] });
  const status = await app.status();
  assert.equal(status.role, 'primary');
  assert.deepEqual(
    (status.volumes as { name: string; sizeBytes: number; readOnly: boolean }[]).map(({ name, sizeBytes, readOnly }) => ({ name, sizeBytes, readOnly })),
    [
      { name: 'alpha', sizeBytes: 64 * 1024 * 1024, readOnly: false },
      { name: 'beta', sizeBytes: 1024 * 1024 * 1024, readOnly: false },
    ],
  );
  const img = statSync(path.join(data, 'volumes', 'beta.img'));
  assert.equal(img.size, 1024 * 1024 * 1024);
  assert.ok(img.blocks * 512 < 1024 * 1024, 'the image is sparse');
  const metrics = await (await fetch(`http://127.0.0.1:${app.httpPort}/metrics`)).text();
  assert.match(metrics, /^offsite_volume_size_bytes\{volume="beta"\} 1073741824$/m);
  assert.equal(await app.stop(), 0);

  // Reopen without sizes: the existing volumes are served again.
  const again = await startAppliance({ dataDir: data, volumes: [] });
  assert.deepEqual(((await again.status()).volumes as { name: string }[]).map((v) => v.name), ['alpha', 'beta']);
  assert.equal(await again.stop(), 0);
  removeDir(dir);
});

test('a configured size above the existing volume grows it at start (the data kept); one below it is served at the volume size with a warning: volumes never shrink', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  let app = await startAppliance({ dataDir: data, volumes: ['alpha:64M'] });
  let r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 63M 1M', app.url('alpha')]);
  assert.equal(r.code, 0, r.stderr);
  await app.stop();
  app = await startAppliance({ dataDir: data, volumes: ['alpha:128M'] });
  assert.equal(((await app.status()).volumes as { sizeBytes: number }[])[0].sizeBytes, 128 * 1024 * 1024);
  assert.ok(app.logs.some((l) => l.msg === 'volume grown to its configured size' && l.previousSizeBytes === 64 * 1024 * 1024));
  assert.equal(statSync(path.join(data, 'volumes', 'alpha.img')).size, 128 * 1024 * 1024);
  r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5c 63M 1M', '-c', 'read -P 0 64M 64M', '-c', 'write -P 0x5d 127M 1M', app.url('alpha')]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  await app.stop();
  // The old configuration again: served at its grown size, said so, nothing lost.
  app = await startAppliance({ dataDir: data, volumes: ['alpha:64M'] });
  assert.equal(((await app.status()).volumes as { sizeBytes: number }[])[0].sizeBytes, 128 * 1024 * 1024);
  assert.ok(app.logs.some((l) => String(l.msg).startsWith('volume is larger than the configured size')));
  r = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x5d 127M 1M', app.url('alpha')]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  await app.stop();
  removeDir(dir);
});

test('bad volume names, bad sizes and bad addresses are configuration errors (exit 2)', async () => {
  const dir = tempDir();
  for (const [args, pattern] of [
    [['--volume', 'Bad/Name:1G'], /invalid volume name/],
    [['--volume', 'ok:12parsecs'], /not a size/],
    [['--volume', 'ok:1G', '--volume', 'ok:2G'], /given twice/],
    [['--volume', 'ok:1G', '--iscsi', 'nowhere'], /not HOST:PORT/],
    [['--volume', 'ok:1G', '--log-level', 'loud'], /log-level/],
  ] as [string[], RegExp][]) {
    const r = await run(process.execPath, [CLI, 'serve', '--data', path.join(dir, 'data'), '--http', '127.0.0.1:0', ...args]);
    assert.ok(r.code === 2 || r.code === 1, `exit code for ${args.join(' ')}: ${r.code}`);
    assert.match(r.stderr, pattern, args.join(' '));
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
  removeDir(dir);
});

test('an unusable or foreign data directory is refused', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'a-file');
  writeFileSync(file, 'x');
  let r = await serve(['--data', path.join(file, 'sub'), '--volume', 'v:1M']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not usable/);
  const foreign = path.join(dir, 'foreign');
  mkdirSync(foreign);
  writeFileSync(path.join(foreign, 'precious.txt'), 'do not touch');
  r = await serve(['--data', foreign, '--volume', 'v:1M']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not an offsite data directory/);
  removeDir(dir);
});

test('a second appliance on the same data directory is refused while the first runs', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  const app = await startAppliance({ dataDir: data, volumes: ['alpha:8M'] });
  const r = await serve(['--data', data]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`in use by a running appliance \\(pid ${app.proc.pid}\\)`));
  await app.stop();
  removeDir(dir);
});

test('a size below a volume that was never resized: the warning does not claim it grew at run time', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  let app = await startAppliance({ dataDir: data, volumes: ['alpha:64M'] });
  await app.stop();
  app = await startAppliance({ dataDir: data, volumes: ['alpha:32M'] });
  assert.equal(((await app.status()).volumes as { sizeBytes: number }[])[0].sizeBytes, 64 * 1024 * 1024);
  const warning = app.logs.find((l) => String(l.msg).startsWith('volume is larger than'));
  assert.ok(warning, 'the smaller configured size is warned about');
  assert.doesNotMatch(String(warning.msg), /grown at run time/);
  assert.equal(warning.configuredSizeBytes, 32 * 1024 * 1024);
  await app.stop();
  removeDir(dir);
});

/** Every file and directory under dir whose mode gives group or others any access. */
function openToOthers(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath ?? e.path, e.name);
    const mode = statSync(p).mode & 0o777;
    if (mode & 0o077) out.push(`${path.relative(dir, p)} ${mode.toString(8)}`);
  }
  return out;
}

test('everything serve creates under the data directory is owner-only, whatever the umask; an existing directory open to others is warned about', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  // The usual shell umask (022) is what the appliance inherits.
  const before = process.umask(0o022);
  let app;
  try {
    app = await startAppliance({ dataDir: data, volumes: ['alpha:8M'], args: ['--journal-retain', '1h'] });
  } finally {
    process.umask(before);
  }
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', app.url('alpha')]);
  assert.equal(r.code, 0, r.stderr);
  await app.stop();
  assert.ok(readdirSync(path.join(data, 'journal')).length > 0, 'the journal exists');
  assert.equal(statSync(data).mode & 0o777, 0o700);
  assert.deepEqual(openToOthers(data), [], 'files and directories readable by group or others');
  // A data directory made (or chmodded) by someone else: served, with a warning saying how to fix it.
  chmodSync(data, 0o755);
  app = await startAppliance({ dataDir: data, volumes: [] });
  const warning = app.logs.find((l) => /accessible to group or others/.test(String(l.msg)));
  assert.ok(warning, 'a warning about the data directory mode');
  assert.equal(warning.mode, '755');
  assert.match(String(warning.msg), /chmod 700/);
  await app.stop();
  removeDir(dir);
});

test('a data directory that cannot be created (under /proc) is refused at once, not retried forever', { skip: !statSync('/proc', { throwIfNoEntry: false })?.isDirectory() && 'no /proc' }, async () => {
  const started = Date.now();
  const r = await serve(['--data', '/proc/offsite-nope/data', '--volume', 'v:1M']);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /data directory \/proc\/offsite-nope\/data is not usable: ENOENT \[DATA_DIR_UNUSABLE\]/);
  assert.ok(Date.now() - started < 20_000, `took ${Date.now() - started} ms`);
});
