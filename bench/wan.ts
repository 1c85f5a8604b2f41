/**
 * The WAN table of `make bench`: a replica in its own network namespace behind a veth pair whose
 * primary side is shaped with `tc tbf` (the project's own token-bucket shaper, --max-bandwidth,
 * is used instead when namespaces cannot be made; the table says which). Measured from outside:
 *   - link utilisation while backlogged: what the shaped link carried (tbf's byte counter: frames
 *     plus TLS, TCP, IP and Ethernet headers) / limit, and the replication frames' share of it,
 *   - lz4 ratio of the shipped stream against the `lz4` command-line tool on the same data,
 *   - replica catch-up (ship + store + apply) rate on loopback, timed from the link coming up,
 *   - RPO: a marker block written on the primary every 250 ms, polled on the replica through
 *     iSCSI; lag = when the replica first shows it − when the primary acknowledged it.
 *
 *   node dist/bench/wan.js [--quick]
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { until } from '../test/helpers/wait';
import path from 'node:path';
import { removeDir, startAppliance, tempDir, type RunningAppliance } from '../test/helpers/appliance';
import { freePort, testLinkKey, waitCaughtUp } from '../test/helpers/replication';

const MiB = 1024 * 1024;
const quick = process.argv.includes('--quick');
const NS = 'offsite-wan-b';
const LINK_MBIT = 80; // 10 MB/s
const LINK_BYTES = (LINK_MBIT * 1e6) / 8;
const VOLUME = '256M';

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

interface Net {
  kind: 'tc tbf between namespaces' | 'offsite shaper (--max-bandwidth)';
  replicaHost: string;
  wrapper?: string[];
  primaryArgs: string[];
  /** Bytes the shaped link has carried (tbf's counter), where the kernel shapes it. */
  carried?(): number;
  teardown(): void;
}

function setupNet(): Net {
  try {
    teardownNs();
    sh('ip', ['netns', 'add', NS]);
    sh('ip', ['link', 'add', 'osw-a', 'type', 'veth', 'peer', 'name', 'osw-b']);
    sh('ip', ['link', 'set', 'osw-b', 'netns', NS]);
    sh('ip', ['addr', 'add', '10.77.0.1/24', 'dev', 'osw-a']);
    sh('ip', ['link', 'set', 'osw-a', 'up']);
    sh('ip', ['netns', 'exec', NS, 'ip', 'addr', 'add', '10.77.0.2/24', 'dev', 'osw-b']);
    sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', 'osw-b', 'up']);
    sh('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', 'lo', 'up']);
    // Primary → replica direction shaped; burst of a few packets, queue up to 200 ms.
    sh('tc', ['qdisc', 'add', 'dev', 'osw-a', 'root', 'tbf', 'rate', `${LINK_MBIT}mbit`, 'burst', '32kb', 'latency', '200ms']);
    return { kind: 'tc tbf between namespaces', replicaHost: '10.77.0.2', wrapper: ['ip', 'netns', 'exec', NS], primaryArgs: [], carried: tbfBytes, teardown: teardownNs };
  } catch (e) {
    teardownNs();
    process.stderr.write(`network namespaces unavailable (${(e as Error).message.split('\n')[0]}); using the project's shaper\n`);
    return { kind: 'offsite shaper (--max-bandwidth)', replicaHost: '127.0.0.1', primaryArgs: ['--max-bandwidth', String(LINK_BYTES)], teardown: () => undefined };
  }
}

function tbfBytes(): number {
  const qdiscs = JSON.parse(execFileSync('tc', ['-s', '-j', 'qdisc', 'show', 'dev', 'osw-a']).toString()) as { kind: string; bytes: number }[];
  const tbf = qdiscs.find((q) => q.kind === 'tbf');
  if (!tbf) throw new Error('no tbf qdisc on osw-a');
  return tbf.bytes;
}

function teardownNs(): void {
  try {
    sh('ip', ['link', 'del', 'osw-a']);
  } catch {
    /* not there */
  }
  try {
    sh('ip', ['netns', 'del', NS]);
  } catch {
    /* not there */
  }
}

async function pair(dir: string, net: Net, primaryArgs: string[] = [], replicaArgs: string[] = []): Promise<{ primary: RunningAppliance; replica: RunningAppliance }> {
  const replPort = await freePort();
  const replica = await startAppliance({
    dataDir: path.join(dir, `b-${Date.now()}`),
    volumes: [],
    host: net.replicaHost,
    wrapper: net.wrapper,
    args: ['--role', 'replica', '--replication-listen', `${net.replicaHost}:${replPort}`, '--link-key', testLinkKey(), ...replicaArgs],
  });
  const primary = await startAppliance({
    dataDir: path.join(dir, `a-${Date.now()}`),
    volumes: [`wan:${VOLUME}`],
    args: ['--replicate-to', `${net.replicaHost}:${replPort}`, '--link-key', testLinkKey(), ...net.primaryArgs, ...primaryArgs],
  });
  return { primary, replica };
}

/**
 * A writer: one qemu-io session fed commands on stdin, 64 KiB writes of random data at `rate`
 * bytes/s (paced with qemu-io's sleep), at random offsets inside [base, base+span).
 */
function writer(url: string, dataFile: string, rate: number, seconds: number, base: number, span: number): Promise<{ bytes: number; seconds: number }> {
  const p = spawn('qemu-io', ['-f', 'raw', url], { stdio: ['pipe', 'pipe', 'pipe'] });
  const perSec = rate / (64 * 1024);
  const total = Math.round(perSec * seconds);
  const sleepMs = Math.max(0, Math.floor(1000 / perSec) - 1);
  let out = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const started = Date.now();
  const lines: string[] = [];
  for (let i = 0; i < total; i++) {
    const off = base + Math.floor(Math.random() * (span / 65536)) * 65536;
    lines.push(`write -q -s ${dataFile} ${off} 64k`);
    if (sleepMs) lines.push(`sleep ${sleepMs}`);
  }
  lines.push('quit');
  p.stdin.end(lines.join('\n') + '\n');
  return new Promise((resolve, reject) => {
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`qemu-io writer exited ${code}: ${out.slice(-500)}`));
      resolve({ bytes: total * 65536, seconds: (Date.now() - started) / 1000 });
    });
  });
}

function qemuIo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile('qemu-io', args, { timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout))),
  );
}

/** Markers every 250 ms on the primary (block 0), polled on the replica; returns lags in seconds. */
async function rpoProbe(primary: RunningAppliance, replica: RunningAppliance, dir: string, seconds: number): Promise<number[]> {
  const acked = new Map<number, number>();
  const lags: number[] = [];
  let stop = false;
  let seen = 0;
  const markerFile = path.join(dir, 'marker.bin');
  const writerLoop = (async () => {
    for (let i = 1; !stop; i++) {
      const b = Buffer.alloc(4096);
      b.writeUInt32BE(i, 0);
      b.write('MARK', 4);
      writeFileSync(markerFile, b);
      const t0 = Date.now();
      await qemuIo(['-f', 'raw', '-c', `write -q -s ${markerFile} 0 4k`, primary.url('wan')]);
      acked.set(i, Date.now());
      const wait = 250 - (Date.now() - t0);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  const pollLoop = (async () => {
    while (!stop) {
      const out = await qemuIo(['-r', '-f', 'raw', '-c', 'read -v 0 8', replica.url('wan')]).catch(() => '');
      const now = Date.now();
      const m = /^00000000:\s+((?:[0-9a-f]{2}\s){8})/m.exec(out);
      if (m) {
        const bytes = Buffer.from(m[1].trim().split(/\s+/).map((h) => parseInt(h, 16)));
        const idx = bytes.readUInt32BE(0);
        if (bytes.toString('ascii', 4, 8) === 'MARK') {
          for (let i = seen + 1; i <= idx; i++) {
            const t = acked.get(i);
            if (t !== undefined) lags.push(Math.max(0, (now - t) / 1000));
          }
          seen = Math.max(seen, idx);
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  stop = true;
  await Promise.all([writerLoop, pollLoop]);
  // Markers never seen by the end count with their age at the end (they are part of the RPO).
  const end = Date.now();
  for (const [i, t] of acked) if (i > seen) lags.push((end - t) / 1000);
  return lags;
}

/** The p-th percentile of xs: one of its values (the upper middle one for p = 50 and an even count). */
export function pct(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function linkBytes(app: RunningAppliance): Promise<{ raw: number; wire: number }> {
  const l = (await app.status()).link as { bytesRaw: number; bytesWire: number };
  return { raw: l.bytesRaw, wire: l.bytesWire };
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r, ri) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ') + (ri === 0 ? '\n' + widths.map((w) => '-'.repeat(w)).join('  ') : '')).join('\n');
}

export async function runWanBench(): Promise<string> {
  const dir = tempDir('offsite-wan-');
  const randomFile = path.join(dir, 'random64k.bin');
  writeFileSync(randomFile, randomBytes(65536));
  const net = setupNet();
  const secs = quick ? 8 : 20;
  const lines: string[] = [];
  const rows: string[][] = [['measure', 'value', 'target']];
  try {
    // 1. Link utilisation while backlogged (writes at 300% of the link, policy alert: no coalescing).
    {
      const { primary, replica } = await pair(dir, net, ['--rpo-policy', 'alert']);
      try {
        const w = writer(primary.url('wan'), randomFile, LINK_BYTES * 3, secs, 8 * MiB, 200 * MiB);
        await new Promise((r) => setTimeout(r, 3000));
        const a = await linkBytes(primary);
        const c0 = net.carried?.();
        const t0 = Date.now();
        await new Promise((r) => setTimeout(r, (secs - 5) * 1000));
        const b = await linkBytes(primary);
        const c1 = net.carried?.();
        const seconds = (Date.now() - t0) / 1000;
        const frames = (b.wire - a.wire) / seconds / LINK_BYTES;
        if (c0 !== undefined && c1 !== undefined) {
          // The limit applies to whole packets: 1448 bytes of TCP payload travel as 1514 here, so
          // frames alone can fill at most about 95.6% of it.
          rows.push(['link utilisation while backlogged (bytes carried / limit)', `${(((c1 - c0) / seconds / LINK_BYTES) * 100).toFixed(1)}%`, '>= 95%']);
          rows.push(['  of which replication frames', `${(frames * 100).toFixed(1)}%`, '']);
        } else {
          // The project's shaper meters frame bytes itself.
          rows.push(['link utilisation while backlogged (frame bytes / limit)', `${(frames * 100).toFixed(1)}%`, '>= 95%']);
        }
        await w;
      } finally {
        await primary.stop();
        await replica.stop();
      }
    }
    // 2. lz4: the shipped stream's ratio vs the lz4 CLI on the same data (a mixed, database-like image).
    {
      const img = path.join(dir, 'mixed.img');
      const parts: Buffer[] = [];
      const words = 'customer order invoice 2026-11-25 paid pending shipped warehouse berlin lisbon '.split(' ');
      // No all-zero regions: qemu-img turns them into WRITE SAME, which would not be like for like.
      for (let i = 0; i < 48; i++) {
        const kind = i % 4;
        if (kind === 0) parts.push(randomBytes(MiB));
        else {
          let s = '';
          while (s.length < MiB) s += `${words[Math.floor(Math.random() * words.length)]} ${Math.floor(Math.random() * 1e6)};`;
          parts.push(Buffer.from(s.slice(0, MiB)));
        }
      }
      writeFileSync(img, Buffer.concat(parts));
      const { primary, replica } = await pair(dir, net);
      try {
        const a = await linkBytes(primary);
        execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, primary.url('wan')]);
        await waitCaughtUp(primary, replica, 300_000);
        const b = await linkBytes(primary);
        const ours = (b.raw - a.raw) / (b.wire - a.wire);
        const cli = execFileSync('sh', ['-c', `lz4 -1 -c ${img} | wc -c`]).toString().trim();
        const cliRatio = (48 * MiB) / Number(cli);
        rows.push(['lz4 ratio, shipped stream (raw / wire)', ours.toFixed(2), `lz4 -1 CLI: ${cliRatio.toFixed(2)}`]);
      } finally {
        await primary.stop();
        await replica.stop();
      }
    }
    // 3. Replica catch-up rate on loopback: a backlog of random data, then the replica joins.
    {
      const loop: Net = { kind: net.kind, replicaHost: '127.0.0.1', primaryArgs: [], teardown: () => undefined };
      const replPort = await freePort();
      const primary = await startAppliance({ dataDir: path.join(dir, 'catchup-a'), volumes: [`wan:${VOLUME}`], args: ['--replicate-to', `127.0.0.1:${replPort}`, '--link-key', testLinkKey()] });
      try {
        await writer(primary.url('wan'), randomFile, 400 * MiB, quick ? 0.4 : 1, 0, 250 * MiB);
        const bytes = ((await primary.status()).backlogBytes as number) || 0;
        const replica = await startAppliance({ dataDir: path.join(dir, 'catchup-b'), volumes: [], args: ['--role', 'replica', '--replication-listen', `127.0.0.1:${replPort}`, '--link-key', testLinkKey()] });
        try {
          // Timed from the link coming up: until then the primary waits out its reconnect
          // backoff (up to 5 s after a replica that was away), which is no part of the rate.
          const up = Date.now();
          await until('the replication link to come up', async () => ((await primary.status()).link as { connected?: boolean }).connected === true, 60_000, 20);
          const linked = Date.now();
          await waitCaughtUp(primary, replica, 300_000, 20);
          const s = (Date.now() - linked) / 1000;
          rows.push([`replica catch-up on loopback (${(bytes / MiB).toFixed(0)} MiB backlog, ship+store+apply)`, `${(bytes / MiB / s).toFixed(1)} MiB/s`, '']);
          rows.push(['  link up after the replica started (reconnect backoff, at most 5 s)', `${((linked - up) / 1000).toFixed(1)} s`, '']);
        } finally {
          await replica.stop();
        }
      } finally {
        await primary.stop();
      }
      void loop;
    }
    // 4. RPO from outside under three loads.
    const scenarios: { name: string; target: string; args: string[]; rate: number; span: number; targetRpo?: number }[] = [
      { name: '(a) writes at 60% of the link', target: 'p99 <= 1 s', args: [], rate: LINK_BYTES * 0.6, span: 200 * MiB },
      { name: '(b) 200% of the link, hot 2 MiB region, coalesce', target: 'max < --rpo-target 10 s', args: ['--rpo-target', '10s', '--rpo-policy', 'coalesce'], rate: LINK_BYTES * 2, span: 2 * MiB, targetRpo: 10 },
      { name: '(c) 200% of the link, uniform random, throttle', target: 'max < --rpo-target 10 s; writers ~ link rate', args: ['--rpo-target', '10s', '--rpo-policy', 'throttle'], rate: LINK_BYTES * 2, span: 200 * MiB, targetRpo: 10 },
    ];
    const rpoRows: string[][] = [['scenario', 'p50 s', 'p99 s', 'max s', 'writers MB/s', 'link MB/s', 'saved MiB', 'target']];
    for (const sc of scenarios) {
      const { primary, replica } = await pair(dir, net, sc.args);
      try {
        const runSecs = quick ? 15 : 30;
        const w = writer(primary.url('wan'), randomFile, sc.rate, runSecs, 8 * MiB, sc.span);
        const lags = await rpoProbe(primary, replica, dir, runSecs);
        const done = await w;
        const st = await primary.status();
        const repl = st.replication as { rpo: { coalescedBytesSaved: number } };
        const link = st.link as { bytesWire: number };
        rpoRows.push([
          sc.name,
          pct(lags, 50).toFixed(2),
          pct(lags, 99).toFixed(2),
          Math.max(...lags).toFixed(2),
          (done.bytes / done.seconds / 1e6).toFixed(1),
          (link.bytesWire / done.seconds / 1e6).toFixed(1),
          (repl.rpo.coalescedBytesSaved / MiB).toFixed(0),
          sc.target,
        ]);
      } finally {
        await primary.stop();
        await replica.stop();
      }
    }
    lines.push(`\nWAN: ${LINK_MBIT} Mbit/s (${(LINK_BYTES / 1e6).toFixed(1)} MB/s) limited by ${net.kind}; ${quick ? 'quick' : 'full'} run`);
    lines.push(table(rows));
    lines.push('');
    lines.push('RPO measured from outside (marker every 250 ms on the primary, polled on the replica through iSCSI):');
    lines.push(table(rpoRows));
  } finally {
    net.teardown();
    removeDir(dir);
  }
  return lines.join('\n') + '\n';
}

if (require.main === module) {
  runWanBench().then(
    (out) => process.stdout.write(out),
    (e: unknown) => {
      process.stderr.write(`wan bench failed: ${(e as Error).stack ?? String(e)}\n`);
      process.exit(1);
    },
  );
}
