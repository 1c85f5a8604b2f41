/**
 * Issue 5 acceptance 1: a real Prometheus (Debian's) scrapes running appliances — a primary, its
 * replica, and a second replica that never met a primary — and every dashboard panel query and
 * every alert expression returns data (the alerts by making each condition true: link cut,
 * RPO over target, journal over its cap, a replica that is not consistent). One of them serves
 * HTTPS and Prometheus scrapes it as the README says (scheme https, the certificate as ca_file).
 * Two primaries use witnesses: one whose only witness never answers, one with a quorum of three
 * of which one is down; Prometheus scrapes the two witnesses that run, too. An online verify
 * finds a chunk damaged on the replica (the differing-replica alert); the primary's shipping is
 * paused (the paused alert).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import YAML from 'yaml';
import { readFileSync } from 'node:fs';
import { PANELS } from '../../grafana/dashboard';
import { CLI, removeDir, startAppliance, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { damageVolumeFile, freePort, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';
import { until } from '../helpers/wait';
import { selfSignedCert } from '../helpers/tls';
import { startWitness, type RunningWitness } from '../../src/appliance/witness';
import { witnessMetrics } from '../../src/ops/metrics';
import { createLogger } from '../../src/ops/logging';

const ROOT = path.resolve(__dirname, '../../..');

interface PromResult {
  status: string;
  data: { resultType: string; result: unknown[] };
  error?: string;
}

async function query(port: number, expr: string): Promise<PromResult> {
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(expr)}`);
  return (await res.json()) as PromResult;
}

test('Prometheus scrapes the appliances: every dashboard query and every alert expression returns data', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const replPort = await freePort();
  const loneReplPort = await freePort();
  const b = await startReplica(path.join(dir, 'b'), replPort);
  const a = await startPrimary(path.join(dir, 'a'), ['vol:64M'], replPort, ['--rpo-target', '1s', '--journal-max', '2M']);
  let c: RunningAppliance | undefined = await startReplica(path.join(dir, 'c'), loneReplPort);
  // A primary whose witness never answers: fenced (waiting for its lease). It serves HTTPS.
  const tls = await selfSignedCert(dir);
  const d = await startAppliance({ dataDir: path.join(dir, 'd'), volumes: ['f:1M'], args: ['--witness', `127.0.0.1:${await freePort()}`, '--http-tls-cert', tls.cert, '--http-tls-key', tls.key] });
  // A primary with a quorum of three witnesses, one of them down: it holds its lease (two of
  // three grant), degraded.
  const quiet = createLogger('silent');
  // The second keeps a state file, checked twice a second (its directory is broken below).
  const stateDir = path.join(dir, 'witness-state');
  const witnesses = await Promise.all([0, 1].map((i) => {
    let w: RunningWitness | undefined;
    const m = witnessMetrics(() => w);
    const state = i === 1 ? { stateFile: path.join(stateDir, 'state.json'), stateCheckMs: 500 } : {};
    return startWitness('127.0.0.1', 0, { leaseMs: 6000, quietMs: 0, logger: quiet, metrics: m.render, ...state }).then((x) => (w = x));
  }));
  const e = await startAppliance({ dataDir: path.join(dir, 'e'), volumes: ['g:1M'], args: ['--witness', [...witnesses.map((w) => `127.0.0.1:${w.address.port}`), `127.0.0.1:${await freePort()}`].join(',')] });
  const promPort = await freePort();
  copyFileSync(path.join(ROOT, 'deploy/alerts.yml'), path.join(dir, 'alerts.yml'));
  const targets = [a, b, c, e].map((x) => `127.0.0.1:${x.httpPort}`);
  writeFileSync(
    path.join(dir, 'prometheus.yml'),
    YAML.stringify({
      global: { scrape_interval: '1s', evaluation_interval: '1s' },
      rule_files: [path.join(dir, 'alerts.yml')],
      scrape_configs: [
        { job_name: 'offsite', static_configs: [{ targets }] },
        { job_name: 'offsite-witness', static_configs: [{ targets: witnesses.map((w) => `127.0.0.1:${w.address.port}`) }] },
        { job_name: 'offsite-https', scheme: 'https', tls_config: { ca_file: tls.cert }, static_configs: [{ targets: [`127.0.0.1:${d.httpPort}`] }] },
      ],
    }),
  );
  const prom = spawn('prometheus', [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${promPort}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let promLog = '';
  prom.stderr.on('data', (d: Buffer) => (promLog = (promLog + d.toString()).slice(-4000)));
  let writing = true;
  const writer = (async () => {
    for (let i = 0; writing; i++) {
      await run('qemu-io', ['-f', 'raw', '-c', `write -P ${1 + (i % 250)} ${(i % 32) * 1024 * 1024} 64k`, '-c', `read 0 64k`, a.url('vol')]);
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  try {
    // promtool agrees the exposition is clean.
    const check = await run('promtool', ['check', 'metrics'], { input: await metrics(a) });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    await until('Prometheus to scrape all five appliances and both witnesses', async () => {
      const r = await query(promPort, 'up == 1').catch(() => undefined);
      return (r?.data.result.length ?? 0) === 7;
    }, 60_000, 250).catch((e: Error) => {
      throw new Error(`${e.message}\n${promLog}`);
    });
    // Only the sites with a witness (d, e) have offsite_witness_reachable: a site without one has
    // no series (a 0 there fired OffsiteWitnessUnreachable at every witness-less site).
    const withWitness = [`127.0.0.1:${d.httpPort}`, `127.0.0.1:${e.httpPort}`].sort();
    const reachable = (await query(promPort, 'offsite_witness_reachable')).data.result as { metric: { instance: string } }[];
    assert.deepEqual(reachable.map((r) => r.metric.instance).sort(), withWitness);
    await waitCaughtUp(a, b);
    // A chunk of the replica's copy damaged behind its back (away from the writer), found by an online verify.
    damageVolumeFile(path.join(dir, 'b'), 'vol', 50 * 1024 * 1024, Buffer.alloc(100, 0xee));
    const v = await run(process.execPath, [CLI, 'verify', '--http', `127.0.0.1:${a.httpPort}`, '--wait'], { timeoutMs: 120_000 });
    assert.equal(v.code, 3, v.stdout + v.stderr);
    // Enough samples for rate() over the panels' windows.
    await new Promise((r) => setTimeout(r, 6000));
    const empty: string[] = [];
    for (const p of PANELS) {
      for (const q of p.queries) {
        const expr = q.expr.replace(/\$site/g, '.*');
        const r = await query(promPort, expr);
        assert.equal(r.status, 'success', `${p.title}: ${expr}: ${r.error ?? ''}`);
        if (r.data.result.length === 0) empty.push(`${p.title}: ${expr}`);
      }
    }
    assert.deepEqual(empty, [], 'dashboard queries without data');
    // The witnesses' own metrics: both grant the primary with the quorum its lease.
    await until('both witnesses to report the lease held', async () => (await query(promPort, 'offsite_witness_lease_held == 1')).data.result.length === 2, 20_000, 250);
    const holders = (await query(promPort, 'offsite_witness_lease_holder_info')).data.result as { metric: { site_id: string } }[];
    assert.deepEqual(holders.map((h) => h.metric.site_id), [String((await e.status()).siteId), String((await e.status()).siteId)]);

    // Make every alert condition true, then evaluate each alert expression.
    const rules = (YAML.parse(readFileSync(path.join(ROOT, 'deploy/alerts.yml'), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups.flatMap((g) => g.rules);
    assert.ok(rules.length >= 4);
    // Shipping paused by the operator (the paused alert), then the replica lost.
    const paused = await run(process.execPath, [CLI, 'pause', '--http', `127.0.0.1:${a.httpPort}`, '--reason', 'alert test']);
    assert.equal(paused.code, 0, paused.stdout + paused.stderr);
    await b.kill('SIGKILL'); // link down; RPO grows; the journal keeps what the replica lacks (over its 2M cap)
    for (let i = 0; i < 6; i++) {
      const r = await run('qemu-io', ['-f', 'raw', '-c', `write -P 9 ${40 * 1024 * 1024 + i * 1024 * 1024} 1M`, a.url('vol')]);
      assert.equal(r.code, 0, r.stderr);
    }
    // The second witness's state directory becomes a file: its state can no longer be written.
    renameSync(stateDir, `${stateDir}.away`);
    writeFileSync(stateDir, 'not a directory');
    await new Promise((r) => setTimeout(r, 3000));
    const silent: string[] = [];
    await until('every alert expression to return data', async () => {
      silent.length = 0;
      for (const rule of rules) {
        const r = await query(promPort, rule.expr);
        assert.equal(r.status, 'success', `${rule.alert}: ${r.error ?? ''}`);
        if (r.data.result.length === 0) silent.push(rule.alert);
      }
      return silent.length === 0;
    }, 30_000, 250).catch((e: Error) => {
      throw new Error(`${e.message}: ${silent.join(', ')} returned nothing`);
    });
    // The witness alert is pending or firing for d alone (its witness never answers), not for
    // the witness-less sites a, b and c.
    const witnessAlerts = (await query(promPort, 'ALERTS{alertname="OffsiteWitnessUnreachable"}')).data.result as { metric: { instance: string } }[];
    assert.deepEqual([...new Set(witnessAlerts.map((r) => r.metric.instance))], [`127.0.0.1:${d.httpPort}`]);
    // Prometheus loaded the rules from the file and they are healthy.
    const rulesApi = (await (await fetch(`http://127.0.0.1:${promPort}/api/v1/rules`)).json()) as { data: { groups: { rules: { name: string; health: string }[] }[] } };
    const loaded = rulesApi.data.groups.flatMap((g) => g.rules);
    assert.deepEqual(loaded.map((r) => r.name).sort(), rules.map((r) => r.alert).sort());
    assert.ok(loaded.every((r) => r.health === 'ok'), JSON.stringify(loaded));
  } finally {
    writing = false;
    await writer;
    prom.kill('SIGTERM');
    await a.stop();
    await b.stop();
    await c?.stop();
    c = undefined;
    await d.stop();
    await e.stop();
    await Promise.all(witnesses.map((w) => w.close()));
    removeDir(dir);
  }
});
