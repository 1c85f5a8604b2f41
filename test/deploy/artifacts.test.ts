/**
 * Deployment artifacts stay valid: the generated Grafana dashboard matches its generator,
 * the alert rules pass promtool, and the compose file passes docker-compose config.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { have, run } from '../helpers/exec';

const ROOT = path.resolve(__dirname, '../../..');

test('the committed Grafana dashboard JSON is what the generator produces', async () => {
  const r = await run(process.execPath, [path.join(ROOT, 'dist/grafana/dashboard.js'), '--check'], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, `dashboard is stale; run node dist/grafana/dashboard.js\n${r.stdout}${r.stderr}`);
});

test('Prometheus alert rules pass promtool check rules', async () => {
  assert.ok(have('promtool'), 'promtool (Debian prometheus) must be installed: make test installs it');
  const r = await run('promtool', ['check', 'rules', path.join(ROOT, 'deploy/alerts.yml')], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /SUCCESS: \d+ rules found/);
});

test('Prometheus scrape configuration passes promtool check config', async () => {
  const r = await run('promtool', ['check', 'config', '--syntax-only', path.join(ROOT, 'deploy/prometheus.yml')], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
});

test('deploy/docker-compose.yml passes docker-compose config', async () => {
  assert.ok(have('docker-compose'), 'docker-compose (Debian) must be installed: make test installs it');
  const r = await run('docker-compose', ['-f', path.join(ROOT, 'deploy/docker-compose.yml'), 'config', '-q'], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stdout + r.stderr);
});
