/**
 * The container artifacts say what the code does: the Dockerfile runs the same `offsite serve`
 * the tests run and copies only paths that exist after `make build`; its HEALTHCHECK passes on a
 * running appliance; every deploy/*.yaml site configuration is accepted by the real config
 * loader, alone and with the environment docker-compose gives it (and so is the README's
 * configuration example); and site-a.yaml and site-b.yaml, run by the real CLI on loopback,
 * replicate to each other.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import YAML from 'yaml';
import { loadConfigFile, resolveConfig } from '../../src/appliance/config';
import { parseRate, parseDuration } from '../../src/common/units';
import { CLI, removeDir, startAppliance, tempDir, type RunningAppliance } from '../helpers/appliance';
import { have, run } from '../helpers/exec';
import { freePort } from '../helpers/replication';
import { selfSignedCert } from '../helpers/tls';
import { until } from '../helpers/wait';

const ROOT = path.resolve(__dirname, '../../..');
const DEPLOY = path.join(ROOT, 'deploy');
/** The path the image reads its configuration from (Dockerfile CMD, docker-compose mounts). */
const IMAGE_CONFIG = '/etc/offsite/site.yaml';
/** Stands in for the admin token files the site configs name (container paths). */
const ENV_TOKEN = { OFFSITE_ADMIN_TOKEN: 'config-files-test-token-0123456789' };

// --- a small Dockerfile reader: instructions per stage, JSON (exec) forms decoded ----------------
interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  from: string;
  name?: string;
  instructions: Instruction[];
}

function parseDockerfile(text: string): Stage[] {
  const lines: string[] = [];
  let cur = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (!cur && (line.trim() === '' || line.trim().startsWith('#'))) continue;
    if (cur && line.trim().startsWith('#')) continue; // comment lines inside a continuation
    if (line.endsWith('\\')) {
      cur += line.slice(0, -1) + ' ';
      continue;
    }
    lines.push((cur + line).trim());
    cur = '';
  }
  if (cur) lines.push(cur.trim());
  const stages: Stage[] = [];
  for (const l of lines) {
    const m = /^(\S+)\s+(.*)$/.exec(l);
    assert.ok(m, `unreadable Dockerfile line: ${l}`);
    const op = m[1].toUpperCase();
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(m[2].trim());
      assert.ok(f, `unreadable FROM: ${l}`);
      stages.push({ from: f[1], name: f[2], instructions: [] });
    } else {
      assert.ok(stages.length, `${op} before FROM`);
      stages[stages.length - 1].instructions.push({ op, args: m[2] });
    }
  }
  return stages;
}

function execForm(args: string, what: string): string[] {
  let v: unknown;
  try {
    v = JSON.parse(args);
  } catch {
    assert.fail(`${what} must use the exec (JSON array) form so no shell sits between Docker and node: ${args}`);
  }
  assert.ok(Array.isArray(v) && v.every((x) => typeof x === 'string'), `${what}: ${args}`);
  return v as string[];
}

function last(stage: Stage, op: string): Instruction | undefined {
  return stage.instructions.filter((i) => i.op === op).pop();
}

/** COPY [--from=x] src... dest (shell form; the Dockerfile uses no JSON COPY). */
function copies(stage: Stage): { from?: string; sources: string[]; dest: string }[] {
  return stage.instructions
    .filter((i) => i.op === 'COPY')
    .map((i) => {
      const words = i.args.split(/\s+/);
      const flags = words.filter((w) => w.startsWith('--'));
      const rest = words.filter((w) => !w.startsWith('--'));
      const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length);
      return { from, sources: rest.slice(0, -1), dest: rest[rest.length - 1] };
    });
}

const dockerfile = () => parseDockerfile(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
const runtimeStage = () => dockerfile().pop()!;
const workdir = (stage: Stage) => last(stage, 'WORKDIR')?.args.trim() ?? '/';

/** The image's command: ENTRYPOINT + CMD of the final stage. */
function imageCommand(): string[] {
  const stage = runtimeStage();
  const entry = last(stage, 'ENTRYPOINT');
  const cmd = last(stage, 'CMD');
  return [...(entry ? execForm(entry.args, 'ENTRYPOINT') : []), ...(cmd ? execForm(cmd.args, 'CMD') : [])];
}

function healthcheckCommand(): string[] {
  const hc = last(runtimeStage(), 'HEALTHCHECK');
  assert.ok(hc, 'the runtime stage needs a HEALTHCHECK');
  const m = /\bCMD\s+(\[.*\])\s*$/.exec(hc.args);
  assert.ok(m, `HEALTHCHECK must be CMD [...] (exec form): ${hc.args}`);
  return execForm(m[1], 'HEALTHCHECK CMD');
}

function siteConfigs(): string[] {
  return readdirSync(DEPLOY)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => path.join(DEPLOY, f));
}

test('the Dockerfile runs the `offsite serve` the tests run (node dist/src/cli/main.js serve)', async () => {
  const argv = imageCommand();
  const cwd = workdir(runtimeStage());
  // test/helpers/appliance.ts spawns process.execPath with [CLI, 'serve', ...].
  const helper = readFileSync(path.join(ROOT, 'test/helpers/appliance.ts'), 'utf8');
  assert.match(helper, /\[CLI, 'serve'/, "the test helper no longer starts [CLI, 'serve', ...]: update this test and the Dockerfile together");
  const cliFromRoot = path.relative(ROOT, CLI).split(path.sep).join('/');
  assert.equal(cliFromRoot, 'dist/src/cli/main.js');
  assert.equal(argv[0], 'node', `image command ${JSON.stringify(argv)} must start with node`);
  assert.equal(path.posix.resolve(cwd, argv[1]), path.posix.join(cwd, cliFromRoot), `image command runs ${argv[1]} in ${cwd}, the tests run ${cliFromRoot}`);
  assert.equal(argv[2], 'serve', `image command ${JSON.stringify(argv)} must be serve`);
  // Every option the image passes is one `offsite serve` has.
  const help = await run(process.execPath, [CLI, 'serve', '--help']);
  assert.equal(help.code, 0, help.stderr);
  for (const opt of argv.slice(3).filter((a) => a.startsWith('--'))) assert.ok(help.stdout.includes(`${opt} `), `offsite serve has no option ${opt}`);
  // The configuration it reads is one the image ships (COPY deploy/site.yaml /etc/offsite/site.yaml).
  const cfg = argv[argv.indexOf('--config') + 1];
  assert.equal(cfg, IMAGE_CONFIG);
  const shipped = copies(runtimeStage()).find((c) => !c.from && c.dest === cfg);
  assert.ok(shipped, `the runtime stage must COPY a default configuration to ${cfg}`);
  assert.deepEqual(shipped.sources, ['deploy/site.yaml']);
});

test('every path the Dockerfile copies exists (sources in the repository, build outputs after make build)', () => {
  const stages = dockerfile();
  const ignored = readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  assert.ok(existsSync(path.join(ROOT, 'dist/src/cli/main.js')), 'run make build first');
  for (const stage of stages) {
    for (const c of copies(stage)) {
      for (const src of c.sources) {
        if (c.from) {
          const fromStage = stages.find((s) => s.name === c.from);
          assert.ok(fromStage, `COPY --from=${c.from}: no such stage`);
          const base = workdir(fromStage);
          assert.ok(src.startsWith(`${base}/`), `COPY --from=${c.from} ${src}: outside that stage's ${base}`);
          const rel = src.slice(base.length + 1);
          // The build stage produces exactly what `make build` produces here.
          assert.ok(existsSync(path.join(ROOT, rel)), `COPY --from=${c.from} ${src}: ${rel} does not exist after make build`);
        } else {
          assert.ok(existsSync(path.join(ROOT, src)), `COPY ${src}: not in the repository`);
          const top = src.split('/')[0];
          assert.ok(!ignored.includes(src) && !ignored.includes(top), `COPY ${src}: excluded by .dockerignore`);
        }
      }
    }
  }
  // The build stage runs `make build`, and the runtime stage gets dist/src and the addon from it.
  const build = stages.find((s) => s.name === 'build');
  assert.ok(build, 'a stage named build');
  assert.ok(build.instructions.some((i) => i.op === 'RUN' && /\bmake build\b/.test(i.args)), 'the build stage must run make build');
  const fromBuild = copies(stages[stages.length - 1]).filter((c) => c.from === 'build').flatMap((c) => c.sources);
  for (const need of ['/src/dist/src', '/src/native/build', '/src/node_modules', '/src/package.json']) assert.ok(fromBuild.includes(need), `runtime stage lacks ${need}`);
  assert.ok(existsSync(path.join(ROOT, 'native/build/blockio.node')));
});

test('every deploy/*.yaml site configuration is accepted by the real config loader', () => {
  const files = siteConfigs();
  assert.ok(files.length >= 3, `site configurations found: ${files.join(', ')}`);
  const healthPort = (healthcheckCommand().join(' ').match(/'(\d+)'/) ?? [])[1];
  assert.equal(healthPort, '9464', 'the HEALTHCHECK default port');
  for (const file of files) {
    const config = resolveConfig(loadConfigFile(file), {}, ENV_TOKEN);
    // Every file is meant for the image: its HTTP port is the one the HEALTHCHECK probes.
    assert.equal(config.http.port, Number(healthPort), `${file}: http port ${config.http.port}, but the HEALTHCHECK probes ${healthPort}`);
    assert.equal(config.dataDir, '/data', `${file}: data must be the image's VOLUME /data`);
    if (config.replication.replicateTo || config.replication.listen) {
      assert.equal(config.replication.insecureLink, false, `${file}: the compose sites use the authenticated link`);
      assert.ok(config.replication.linkKeyFile, `${file}: link key`);
    }
  }
  const a = resolveConfig(loadConfigFile(path.join(DEPLOY, 'site-a.yaml')), {}, ENV_TOKEN);
  const b = resolveConfig(loadConfigFile(path.join(DEPLOY, 'site-b.yaml')), {}, ENV_TOKEN);
  assert.equal(a.role, 'primary');
  assert.equal(b.role, 'replica');
  assert.equal(a.replication.replicateTo?.port, b.replication.listen?.port, 'site-a replicates to the port site-b listens on');
  assert.equal(a.replication.linkKeyFile, b.replication.linkKeyFile, 'both sites read the same link key');
});

test('the configuration file example in README.md is accepted by the real config loader', () => {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.indexOf('### Configuration file');
  assert.ok(section >= 0, 'README.md has a "### Configuration file" section');
  const m = /```yaml\n([\s\S]*?)```/.exec(readme.slice(section));
  assert.ok(m, 'a ```yaml block in that section');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'offsite-readme-'));
  try {
    const file = path.join(dir, 'site.yaml');
    writeFileSync(file, m[1]);
    // The example names an admin token file that exists only on a real site.
    const config = resolveConfig(loadConfigFile(file), {}, ENV_TOKEN);
    assert.ok(config.volumes.length > 0);
  } finally {
    removeDir(dir);
  }
});

test('docker-compose: each offsite service resolves (its mounted site file + its environment) with the real loader', { skip: !have('docker-compose') && 'docker-compose is not installed (make test installs it)' }, async () => {
  const r = await run('docker-compose', ['-f', path.join(DEPLOY, 'docker-compose.yml'), 'config'], { timeoutMs: 60_000, env: { ...process.env, WAN_BANDWIDTH: '', RPO_TARGET: '', RPO_POLICY: '' } });
  assert.equal(r.code, 0, r.stderr);
  const compose = YAML.parse(r.stdout) as { services: Record<string, { image?: string; environment?: Record<string, string>; volumes?: string[] }> };
  const sites: Record<string, ReturnType<typeof resolveConfig>> = {};
  for (const [name, svc] of Object.entries(compose.services)) {
    const mount = (svc.volumes ?? []).map((v) => v.split(':')).find((p) => p[1] === IMAGE_CONFIG);
    if (!mount) continue;
    assert.equal(svc.image, 'offsite:latest', `${name} mounts ${IMAGE_CONFIG} but does not run the offsite image`);
    assert.ok(existsSync(mount[0]) && path.dirname(mount[0]) === DEPLOY, `${name}: ${mount[0]} is not a file under deploy/`);
    const env = { ...(svc.environment ?? {}), ...ENV_TOKEN };
    const config = resolveConfig(loadConfigFile(mount[0]), {}, env);
    // The settings the compose file exposes, at their defaults.
    assert.equal(config.replication.maxBandwidthBytesPerSec, parseRate('10MB/s'), `${name}: WAN_BANDWIDTH default`);
    assert.equal(config.replication.rpoTargetMs, parseDuration('30s'), `${name}: RPO_TARGET default`);
    // The secrets the site file names live in a volume the service mounts.
    for (const secret of [config.replication.linkKeyFile].filter(Boolean) as string[]) {
      assert.ok((svc.volumes ?? []).some((v) => v.split(':')[1] === path.posix.dirname(secret)), `${name}: nothing mounted at ${path.posix.dirname(secret)} for ${secret}`);
    }
    sites[name] = config;
  }
  assert.deepEqual(Object.keys(sites).sort(), ['site-a', 'site-b']);
  assert.equal(sites['site-a'].role, 'primary');
  assert.equal(sites['site-b'].role, 'replica');
  assert.equal(sites['site-a'].replication.replicateTo?.host, 'site-b', 'site-a replicates to the site-b service by name');
});

test('docker-compose with deploy/docker-compose.witness.yml: a witness service runs the image\'s witness command with the key the keys service writes; the sites resolve with it; run here, the witness grants site-a its lease, keeps it in its state file, and its healthcheck passes', { skip: !have('docker-compose') && 'docker-compose is not installed (make test installs it)', timeout: 60_000 }, async () => {
  const r = await run('docker-compose', ['-f', path.join(DEPLOY, 'docker-compose.yml'), '-f', path.join(DEPLOY, 'docker-compose.witness.yml'), 'config'], { timeoutMs: 60_000, env: { ...process.env, WAN_BANDWIDTH: '', RPO_TARGET: '', RPO_POLICY: '', FAILOVER_AFTER: '' } });
  assert.equal(r.code, 0, r.stderr);
  type Svc = { image?: string; command?: string[]; entrypoint?: string[]; environment?: Record<string, string>; volumes?: string[]; healthcheck?: { test: string[] } };
  const { services } = YAML.parse(r.stdout) as { services: Record<string, Svc> };
  const w = services.witness;
  assert.ok(w, 'a witness service');
  assert.equal(w.image, 'offsite:latest');
  const cmd = w.command ?? [];
  assert.equal(cmd[0], 'witness');
  const keyPath = cmd[cmd.indexOf('--key-file') + 1];
  assert.ok(keyPath && (w.volumes ?? []).some((v) => v.split(':')[1] === path.posix.dirname(keyPath)), `the witness mounts ${keyPath}`);
  assert.ok(services.keys.command?.join(' ').includes(`keygen --witness-key ${keyPath}`), 'the keys service writes the witness key');
  const statePath = cmd[cmd.indexOf('--state') + 1];
  assert.ok(cmd.includes('--state') && (w.volumes ?? []).some((v) => v.split(':')[1] === path.posix.dirname(statePath)), `the witness keeps its state (${statePath}) in a volume`);
  // The sites, through the real loader; the key file they name exists only in the volume, so a local one stands in.
  const dir = tempDir('offsite-compose-witness-');
  try {
    const localKey = path.join(dir, 'witness.key');
    const k = await run(process.execPath, [CLI, 'keygen', '--witness-key', localKey]);
    assert.equal(k.code, 0, k.stderr);
    const site = (name: string) => {
      const svc = services[name];
      assert.equal(svc.environment?.OFFSITE_WITNESS_KEY, keyPath, `${name} uses the witness's key`);
      const mount = (svc.volumes ?? []).map((v) => v.split(':')).find((p) => p[1] === IMAGE_CONFIG)!;
      return resolveConfig(loadConfigFile(mount[0]), {}, { ...svc.environment, ...ENV_TOKEN, OFFSITE_WITNESS_KEY: localKey });
    };
    const a = site('site-a');
    const b = site('site-b');
    assert.equal(a.witness?.address, 'witness:7790');
    assert.ok(a.witness?.key, 'site-a: a keyed witness');
    for (const [name, c] of [['site-a', a], ['site-b', b]] as const) assert.equal(c.witness?.failoverAfterMs, parseDuration('30s'), `${name} takes over after FAILOVER_AFTER (default 30s) whenever it is the replica`);
    // The witness command as the image runs it (entry point: the CLI), on loopback with the local key; then a site and the healthcheck.
    const port = await freePort();
    const localState = path.join(dir, 'witness-state.json');
    const args = cmd.map((a) => (a === '0.0.0.0:7790' ? `127.0.0.1:${port}` : a === keyPath ? localKey : a === statePath ? localState : a));
    const witness = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const primary = await startAppliance({ dataDir: path.join(dir, 'a'), volumes: ['v:1M'], args: ['--witness', `127.0.0.1:${port}`, '--witness-key', localKey] });
      try {
        await until('site-a to get its lease', async () => !((await primary.status()).witness as { fenced: boolean }).fenced, 15_000, 100);
        assert.match(readFileSync(localState, 'utf8'), /"holder": \{/, 'the witness wrote the holder to its state file');
      } finally {
        await primary.stop();
      }
      const [node, ...hc] = (w.healthcheck?.test ?? []).slice(1);
      assert.equal(node, 'node');
      const h = await run(process.execPath, hc.map((a) => a.replace('7790', String(port))), { timeoutMs: 30_000 });
      assert.equal(h.code, 0, `the witness healthcheck failed: ${h.stderr}`);
    } finally {
      witness.kill('SIGTERM');
    }
  } finally {
    removeDir(dir);
  }
});

test('site-a.yaml and site-b.yaml, run by the real CLI on loopback, replicate; the HEALTHCHECK passes on a running site, plain or HTTPS', { timeout: 120_000 }, async () => {
  const dir = tempDir('offsite-config-files-');
  const keyDir = mkdtempSync(path.join(os.tmpdir(), 'offsite-keys-'));
  const apps: RunningAppliance[] = [];
  try {
    // The link key the compose `keys` service makes, made the same way.
    const linkKey = path.join(keyDir, 'link.key');
    const k = await run(process.execPath, [CLI, 'keygen', '--link-key', linkKey]);
    assert.equal(k.code, 0, k.stderr);
    const replPort = await freePort();
    // The files' own addresses are container ones; flags move them to loopback (flags override the file).
    const b = await startAppliance({ dataDir: path.join(dir, 'b'), volumes: [], args: ['--config', path.join(DEPLOY, 'site-b.yaml'), '--replication-listen', `127.0.0.1:${replPort}`, '--link-key', linkKey], env: ENV_TOKEN });
    apps.push(b);
    const a = await startAppliance({ dataDir: path.join(dir, 'a'), volumes: [], args: ['--config', path.join(DEPLOY, 'site-a.yaml'), '--replicate-to', `127.0.0.1:${replPort}`, '--link-key', linkKey], env: ENV_TOKEN });
    apps.push(a);
    const deadline = Date.now() + 30_000;
    let st: Record<string, unknown> = {};
    while (Date.now() < deadline) {
      st = await a.status();
      if ((st.link as { connected?: boolean } | undefined)?.connected) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    assert.equal(st.role, 'primary');
    assert.ok((st.link as { connected?: boolean }).connected, `site-a never connected to site-b: ${JSON.stringify(st.link)}`);
    assert.deepEqual((st.volumes as { name: string }[]).map((v) => v.name), ['vol1']);
    const sb = await b.status();
    assert.equal(sb.role, 'replica');

    // HEALTHCHECK, exactly as the image runs it (with OFFSITE_HTTP pointing at this site's port).
    const [cmd, ...args] = healthcheckCommand();
    assert.equal(cmd, 'node');
    const env = { ...process.env, OFFSITE_HTTP: `127.0.0.1:${a.httpPort}` };
    let h = await run(process.execPath, args, { env, timeoutMs: 30_000 });
    assert.equal(h.code, 0, `HEALTHCHECK failed on a running site: ${h.stderr}`);
    assert.equal(await a.stop(), 0);
    h = await run(process.execPath, args, { env, timeoutMs: 30_000 });
    assert.notEqual(h.code, 0, 'HEALTHCHECK passed with the site stopped');
    // A site serving HTTPS passes too, and the probe leaves nothing in its log.
    const tls = await selfSignedCert(keyDir);
    const c = await startAppliance({ dataDir: path.join(dir, 'c'), volumes: [], args: ['--config', path.join(DEPLOY, 'site.yaml'), '--http-tls-cert', tls.cert, '--http-tls-key', tls.key], env: ENV_TOKEN });
    apps.push(c);
    h = await run(process.execPath, args, { env: { ...process.env, OFFSITE_HTTP: `127.0.0.1:${c.httpPort}` }, timeoutMs: 30_000 });
    assert.equal(h.code, 0, `HEALTHCHECK failed on a running HTTPS site: ${h.stderr}`);
    await new Promise((res) => setTimeout(res, 300));
    assert.deepEqual(c.logs.filter((l) => Number(l.level) >= 40).map((l) => l.msg), [], 'the probe caused warnings');
  } finally {
    for (const app of apps) await app.stop();
    removeDir(dir);
    removeDir(keyDir);
  }
});
