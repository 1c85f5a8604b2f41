/** Two real appliances (primary → replica) for replication tests, and helpers to compare them. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { closeSync, openSync, writeSync } from 'node:fs';
import { ADMIN_TOKEN, startAppliance, type RunningAppliance } from './appliance';
import { FaultProxy } from './fault-proxy';
import { run } from './exec';

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A link key file both sites of a test share (TLS 1.3 PSK), made once per test process. */
let sharedKey: string | undefined;
export function testLinkKey(): string {
  if (!sharedKey) {
    sharedKey = path.join(mkdtempSync(path.join(os.tmpdir(), 'offsite-key-')), 'link.key');
    writeFileSync(sharedKey, JSON.stringify({ identity: 'offsite-link', psk: randomBytes(32).toString('hex') }), { mode: 0o600 });
  }
  return sharedKey;
}

const linkArgs = (args: string[]) => (args.includes('--insecure-link') || args.includes('--link-key') ? [] : ['--link-key', testLinkKey()]);

export function startReplica(dataDir: string, replPort: number, args: string[] = [], env?: NodeJS.ProcessEnv): Promise<RunningAppliance> {
  return startAppliance({ dataDir, volumes: [], args: ['--role', 'replica', '--replication-listen', `127.0.0.1:${replPort}`, ...linkArgs(args), ...args], env });
}

export function startPrimary(dataDir: string, volumes: string[], replicateTo: number, args: string[] = [], env?: NodeJS.ProcessEnv): Promise<RunningAppliance> {
  return startAppliance({ dataDir, volumes, args: ['--replicate-to', `127.0.0.1:${replicateTo}`, ...linkArgs(args), ...args], env });
}

/** Poll until the replica holds (durably and applied) everything the primary has. */
export async function waitCaughtUp(primary: RunningAppliance, replica: RunningAppliance, timeoutMs = 60_000, pollMs = 100): Promise<{ headSeq: number }> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const p = await primary.status();
    const r = await replica.status();
    last = `primary head ${String(p.headSeq)} acked ${String(p.ackedSeq)} (${String(p.consistency)}, link error: ${String((p.link as { lastError?: string }).lastError)}); replica applied ${String(r.appliedSeq)} ${String(r.state)}, replica link error: ${String((r.link as { lastError?: string }).lastError)}`;
    if (p.ackedSeq === p.headSeq && r.appliedSeq === p.headSeq && r.state === 'consistent' && (p.link as { connected: boolean }).connected) return { headSeq: p.headSeq as number };
    if (Date.now() > deadline) throw new Error(`replica did not catch up: ${last}`);
    await new Promise((res) => setTimeout(res, pollMs));
  }
}

export async function readVolume(app: RunningAppliance, volume: string, file: string): Promise<Buffer> {
  const r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', app.url(volume), file], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  return readFileSync(file);
}

export async function assertSameVolume(primary: RunningAppliance, replica: RunningAppliance, volume: string, dir: string): Promise<void> {
  const a = await readVolume(primary, volume, path.join(dir, `${volume}.primary.img`));
  const b = await readVolume(replica, volume, path.join(dir, `${volume}.replica.img`));
  assert.equal(a.length, b.length);
  if (!a.equals(b)) {
    let i = 0;
    while (a[i] === b[i]) i++;
    assert.fail(`volume ${volume}: replica differs from the primary at byte ${i} (block ${Math.floor(i / 4096)})`);
  }
}

/** Prometheus text → value of one sample (first match; labels exactly as printed, or none). */
export function metricValue(text: string, name: string, labels = ''): number | undefined {
  const prefix = labels ? `${name}{${labels}} ` : `${name} `;
  for (const line of text.split('\n')) if (line.startsWith(prefix)) return Number(line.slice(prefix.length).split(' ')[0]);
  return undefined;
}

export async function metrics(app: RunningAppliance): Promise<string> {
  return (await fetch(`http://${app.host}:${app.httpPort}/metrics`)).text();
}

/**
 * Read a volume of whichever replica is current, over and over, through its iSCSI target, and
 * hand each image to `check` (reads that fail while the replica is down are skipped). Each image
 * is one READ command (`qemu-img dd` with the whole volume as its block; volumes here are at most
 * the 32 MiB a READ may ask for): the replica promises a prefix state to every read, and applies
 * records between reads. An image made of several READs (qemu-img convert reads 2 MiB at a time)
 * can mix two states when a burst of applies overtakes the reader, which a prefix check cannot
 * tell from a broken prefix (seen once in a 1000-fault campaign).
 */
export function pollReplica(current: () => RunningAppliance | undefined, volume: string, sizeBytes: number, dir: string, check: (img: Buffer) => void): { reads: () => number; stop: () => Promise<void> } {
  if (sizeBytes > 32 * 1024 * 1024) throw new Error(`pollReplica: ${sizeBytes} bytes is more than one READ may ask for`);
  let stop = false;
  let reads = 0;
  const loop = (async () => {
    for (let i = 0; !stop; i++) {
      const r = current();
      if (!r) {
        await new Promise((res) => setTimeout(res, 50));
        continue;
      }
      const file = path.join(dir, `poll${i % 2}.img`);
      // A read from a replica that is killed or restarted meanwhile is given up at once: libiscsi
      // reconnects to the old port until the timeout, and a short campaign could end before any
      // read was checked.
      const gone = new AbortController();
      const watch = setInterval(() => (stop || current() !== r) && gone.abort(), 100);
      const res = await run('qemu-img', ['dd', '-f', 'raw', '-O', 'raw', `bs=${sizeBytes}`, 'count=1', `if=${r.url(volume)}`, `of=${file}`], { timeoutMs: 30_000, signal: gone.signal }).catch(() => undefined);
      clearInterval(watch);
      if (!res || res.code !== 0) continue;
      reads++;
      check(readFileSync(file));
    }
  })();
  return {
    reads: () => reads,
    stop: async () => {
      stop = true;
      await loop;
    },
  };
}

/** A primary shipping to a replica through the project's fault proxy (the link faults go there). */
export async function startPairBehindProxy(dir: string, volumes: string[], seed: number, replicaArgs: string[] = []): Promise<{ proxy: FaultProxy; proxyPort: number; replPort: number; aDir: string; bDir: string; primary: RunningAppliance; replica: RunningAppliance }> {
  const replPort = await freePort();
  const proxy = new FaultProxy('127.0.0.1', replPort, seed);
  const proxyPort = await proxy.listen();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  const replica = await startReplica(bDir, replPort, replicaArgs);
  const primary = await startPrimary(aDir, volumes, proxyPort);
  return { proxy, proxyPort, replPort, aDir, bDir, primary, replica };
}

/** A chain record (dependent writes): 4 KiB holding 'CHAIN', its number k and its predecessor k-1. */
export function chainBlock(k: number): Buffer {
  const b = Buffer.alloc(4096, k % 251);
  b.write('CHAIN', 0, 'ascii');
  b.writeUInt32BE(k, 8);
  b.writeUInt32BE(k - 1, 12);
  return b;
}

/** Overwrite bytes of a replica's volume file directly, as a failing disk or a stray process would. */
export function damageVolumeFile(dataDir: string, volume: string, offset: number, bytes: Buffer): void {
  const fd = openSync(path.join(dataDir, 'volumes', `${volume}.img`), 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** One online verify run as /status reports it (the fields the long runs count). */
export interface VerifyRunResult {
  state: string;
  checkedBytes: number;
  unverifiedBytes: number;
  mismatchedChunks: number;
  mismatches: unknown[];
}

/**
 * Online verify over and over on whichever primary `current()` gives, until `keepGoing()` says
 * no: each run that ends (done, stopped or failed) goes to `onRun`. A start the primary refuses
 * (the replica away, say) or a primary killed under a call is simply tried again.
 */
export async function verifyOverAndOver(current: () => RunningAppliance | undefined, keepGoing: () => boolean, onRun: (v: VerifyRunResult) => void, body: Record<string, unknown> = {}): Promise<void> {
  while (keepGoing()) {
    const p = current();
    try {
      const res = p && (await fetch(`http://127.0.0.1:${p.httpPort}/verify`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) }));
      while (res?.status === 202 && keepGoing() && current() === p) {
        await new Promise((r) => setTimeout(r, 100));
        const v = (await p!.status()).verify as VerifyRunResult;
        if (v.state === 'running') continue;
        onRun(v);
        break;
      }
    } catch {
      // the primary was killed under the call
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Replica and primary arguments for a link slower than the writes, so that the shipper coalesces: 1 MB/s, a 4 s RPO target (coalescing from 2 s projected), history on both. */
export const COALESCING = { replica: ['--journal-retain', '1h'], primary: ['--journal-retain', '1h', '--max-bandwidth', '1MB/s', '--rpo-target', '4s'] };

/**
 * Overwrites of a hot region that do not compress (the bandwidth cap counts bytes on the wire):
 * 16 slots of 64 KiB at the start of `url`'s volume, written over and over, never twice in a row
 * with the same data (13 sources against 16 slots). Writes number `from`..`from + count - 1`.
 */
export function hotOverwrites(dir: string): (url: string, from: number, count: number) => Promise<void> {
  const slot = 64 * 1024;
  const sources = Array.from({ length: 13 }, (_, i) => {
    const f = path.join(dir, `hot-src-${i}.bin`);
    writeFileSync(f, randomBytes(slot));
    return f;
  });
  return async (url, from, count) => {
    const cmds: string[] = [];
    for (let k = from; k < from + count; k++) cmds.push('-c', `write -s ${sources[k % sources.length]} ${((k * 7) % 16) * slot} ${slot}`);
    const w = await run('qemu-io', ['-f', 'raw', ...cmds, url], { timeoutMs: 120_000 });
    assert.equal(w.code, 0, w.stderr);
  };
}
