/**
 * The fault campaign (issue 6): randomized, reproducible from a printed seed. A primary and a
 * replica run with the project's fault proxy on the link while a writer lays down a chain of
 * dependent records (record k at block ((k-1) mod N)+1, each acknowledged before the next is
 * issued) and a reader polls the replica through iSCSI. Faults: SIGKILL either side, clean
 * restarts, link cuts, stalls, slow links, duplicated and corrupted bytes, and an operator's
 * pause of shipping (offsite pause, resumed a moment later; a running verify stops), an online
 * grow of the volume by 1 MiB (offsite resize: a new handshake grows the replica's copy), and a
 * volume added online (offsite add-volume: the replica creates its copy; verify covers it), and
 * a test failover at a random earlier point of the replica's history (offsite test-failover
 * --seq, or --bookmark for one taken earlier: a bookmark fault takes one on the primary while
 * the chain is written; built while records arrive; the copy must be a chain prefix too).
 * Invariants checked
 * after every fault and at the end:
 *   - no acknowledged write lost on the primary (its chain reaches the last acknowledged record),
 *   - the replica is always a prefix of the primary's history (chain check on every read),
 *   - images equal after catch-up,
 *   - no full resync where a resume was possible (no sync ever started),
 *   - online verify, run over and over on the primary through all of it, never reports a
 *     difference (nothing damages the replica here: any difference is a bug in replication or in
 *     verify), and a last verify after catch-up compares every byte and finds them equal.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ADMIN_TOKEN, CLI, removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { FaultProxy, rng } from '../helpers/fault-proxy';
import { chainBlock, freePort, pollReplica, startPairBehindProxy, readVolume, startPrimary, startReplica, verifyOverAndOver, waitCaughtUp } from '../helpers/replication';

const BLOCK = 4096;
const MiB = 1024 * 1024;

export const FAULT_KINDS = ['killPrimary', 'killReplica', 'restartPrimary', 'restartReplica', 'cut', 'stall', 'slow', 'duplicate', 'corrupt', 'pauseShipping', 'growVolume', 'addVolume', 'removeVolume', 'testAtPoint', 'bookmark'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface CampaignResult {
  seed: number;
  faults: Record<FaultKind, number>;
  faultsTotal: number;
  recordsAcked: number;
  replicaReads: number;
  lostWrites: number;
  nonPrefixStates: number;
  crashes: number;
  fullResyncs: number;
  imagesEqual: boolean;
  /** Test copies made at an earlier point and read (testAtPoint), and points refused (inside a coalesced batch, or trimmed meanwhile). */
  pointCopies: number;
  pointsRefused: number;
  /** Bookmarks taken on the primary, and test copies made at one by name. */
  bookmarks: number;
  bookmarkCopies: number;
  /** Added volumes removed right after a last write to them; how many the replica retired equal to the primary's moved-aside image. */
  volumesRemoved: number;
  removedCopiesEqual: number;
  /** Online verify runs that ended (done) during the faults, bytes they compared, differences they reported. */
  verifyRuns: number;
  verifiedBytes: number;
  verifyDifferences: number;
  problems: string[];
}

/**
 * Is the image a prefix of the chain? M = the newest record visible; every block must hold the
 * newest record ≤ M that maps to it (or be empty when none does). Returns M or an error.
 */
export function checkChainImage(img: Buffer, n: number): { top: number; error?: string } {
  const ks: number[] = new Array(n + 1).fill(0);
  let top = 0;
  for (let b = 1; b <= n; b++) {
    const blk = img.subarray(b * BLOCK, (b + 1) * BLOCK);
    if (blk.toString('ascii', 0, 5) !== 'CHAIN') continue;
    const k = blk.readUInt32BE(8);
    if (blk.readUInt32BE(12) !== k - 1 || ((k - 1) % n) + 1 !== b) return { top, error: `block ${b} holds a damaged record` };
    ks[b] = k;
    top = Math.max(top, k);
  }
  for (let b = 1; b <= n; b++) {
    const expected = top >= b ? b + n * Math.floor((top - b) / n) : 0;
    if (ks[b] !== expected) return { top, error: `record ${top} is visible but block ${b} holds ${ks[b] || 'nothing'} instead of ${expected}` };
  }
  return { top };
}

/** One of an appliance's log records as a line: the message, then its fields (not pino's own). */
function logLine(l: Record<string, unknown>): string {
  return `${String(l.msg)} ${JSON.stringify({ ...l, msg: undefined, time: undefined, pid: undefined, hostname: undefined, name: undefined })}`;
}

export async function runCampaign(opts: { faults: number; seed?: number; log?: (line: string) => void }): Promise<CampaignResult> {
  const seed = opts.seed ?? Date.now() % 1_000_000;
  const rand = rng(seed);
  const log = opts.log ?? (() => undefined);
  const N = 2048; // chain blocks (8 MiB of a 16 MiB volume)
  const dir = tempDir('offsite-faults-');
  const files = path.join(dir, 'chain');
  mkdirSync(files);
  const result: CampaignResult = {
    seed,
    faults: Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>,
    faultsTotal: 0,
    recordsAcked: 0,
    replicaReads: 0,
    lostWrites: 0,
    nonPrefixStates: 0,
    crashes: 0,
    fullResyncs: 0,
    imagesEqual: false,
    pointCopies: 0,
    pointsRefused: 0,
    bookmarks: 0,
    bookmarkCopies: 0,
    volumesRemoved: 0,
    removedCopiesEqual: 0,
    verifyRuns: 0,
    verifiedBytes: 0,
    verifyDifferences: 0,
    problems: [],
  };
  // The replica keeps history, for the test copies at an earlier point (and its base images fold meanwhile).
  const replicaArgs = ['--journal-retain', '20s'];
  const pair = await startPairBehindProxy(dir, [`chain:${16 * MiB}`], seed, replicaArgs);
  const { proxy, proxyPort, replPort, aDir, bDir } = pair;
  let replica: RunningAppliance | undefined = pair.replica;
  let primary: RunningAppliance | undefined = pair.primary;
  const primaries: RunningAppliance[] = [primary];
  const watch = (app: RunningAppliance, name: string) => {
    void new Promise<void>((resolve) => app.proc.once('exit', (code, signal) => {
      if (signal !== 'SIGKILL' && code !== 0) {
        result.crashes++;
        // What it said last: its last log lines and stderr (a stack trace).
        const last = app.logs.slice(-15).map(logLine);
        result.problems.push(`${name} exited with ${code ?? signal}; its last log lines: ${last.join(' | ') || 'none'}; stderr: ${app.stderr().slice(-1500) || 'none'}`);
      }
      resolve();
    }));
  };
  watch(primary, 'primary');
  watch(replica, 'replica');
  const reader = pollReplica(() => replica, 'chain', 16 * MiB, dir, (img) => {
    result.replicaReads++;
    const c = checkChainImage(img, N);
    if (c.error) {
      result.nonPrefixStates++;
      result.problems.push(`seed ${seed}: replica not a prefix: ${c.error}`);
    }
  });
  // Online verify on whichever primary runs, again and again.
  let verifying = true;
  const verifier = verifyOverAndOver(() => primary, () => verifying, (v) => {
    if (v.state === 'done') result.verifyRuns++;
    result.verifiedBytes += v.checkedBytes;
    if (v.mismatchedChunks > 0) {
      result.verifyDifferences += v.mismatchedChunks;
      result.problems.push(`seed ${seed}: online verify reported ${v.mismatchedChunks} differing chunks: ${JSON.stringify(v.mismatches).slice(0, 400)}`);
    }
  });
  let acked = 0;
  const writeBatch = async (count: number, during: () => Promise<void>) => {
    const from = acked + 1;
    const to = from + count;
    // qemu-io writes each record from its own small file (removed after the batch).
    const args = ['-oL', 'qemu-io', '-f', 'raw'];
    for (let k = from; k < to; k++) {
      const f = path.join(files, `k${k}.blk`);
      writeFileSync(f, chainBlock(k));
      args.push('-c', `write -s ${f} ${(((k - 1) % N) + 1) * BLOCK} ${BLOCK}`);
    }
    args.push(primary!.url('chain'));
    const p = spawn('stdbuf', args, { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const done = new Promise<void>((resolve) => p.on('close', () => resolve()));
    await during();
    const killer = setTimeout(() => p.kill('SIGKILL'), 1500);
    await done;
    clearTimeout(killer);
    const n = (out.match(/wrote 4096\/4096 bytes/g) ?? []).length;
    acked = Math.max(acked, from + n - 1);
    for (let k = from; k < to; k++) rmSync(path.join(files, `k${k}.blk`), { force: true });
  };
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let syncsSeen = 0;
  try {
    for (let i = 0; i < opts.faults; i++) {
      const kind = FAULT_KINDS[Math.floor(rand() * FAULT_KINDS.length)];
      result.faults[kind]++;
      result.faultsTotal++;
      await writeBatch(40 + Math.floor(rand() * 120), async () => {
        await pause(50 + rand() * 250);
        switch (kind) {
          case 'killPrimary':
          case 'restartPrimary': {
            await (kind === 'killPrimary' ? primary!.kill('SIGKILL') : primary!.stop());
            primary = await startPrimary(aDir, [], proxyPort);
            primaries.push(primary);
            watch(primary, 'primary');
            break;
          }
          case 'killReplica':
          case 'restartReplica': {
            const r = replica!;
            replica = undefined;
            await (kind === 'killReplica' ? r.kill('SIGKILL') : r.stop());
            replica = await startReplica(bDir, replPort, replicaArgs);
            watch(replica, 'replica');
            break;
          }
          case 'cut':
            proxy.cut();
            break;
          case 'stall':
            proxy.stall(true);
            await pause(300 + rand() * 700);
            proxy.stall(false);
            break;
          case 'slow':
            proxy.setRate(256 * 1024);
            await pause(500 + rand() * 500);
            proxy.setRate(0);
            break;
          case 'duplicate':
            proxy.duplicate(1);
            break;
          case 'corrupt':
            proxy.corrupt(1, rand() < 0.5 ? 'up' : 'down');
            break;
          case 'growVolume': {
            const p = primary!;
            const size = ((await p.status()).volumes as { name: string; sizeBytes: number }[]).find((v) => v.name === 'chain')!.sizeBytes;
            const res = await fetch(`http://127.0.0.1:${p.httpPort}/resize`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ volume: 'chain', sizeBytes: size + MiB }) });
            if (res.status !== 200) result.problems.push(`seed ${seed}: fault ${i + 1}: POST /resize answered ${res.status}: ${await res.text()}`);
            break;
          }
          case 'addVolume': {
            const p = primary!;
            const res = await fetch(`http://127.0.0.1:${p.httpPort}/volumes`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: `added-${i + 1}`, sizeBytes: MiB }) });
            if (res.status !== 201) result.problems.push(`seed ${seed}: fault ${i + 1}: POST /volumes answered ${res.status}: ${await res.text()}`);
            break;
          }
          case 'removeVolume': {
            // An added volume, written to last and removed at once: the replica must get that write before it retires its copy.
            const p = primary!;
            const added = ((await p.status()).volumes as { name: string }[]).map((v) => v.name).filter((n) => n.startsWith('added-'));
            if (!added.length) break;
            const name = added[Math.floor(rand() * added.length)];
            const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${(i % 250) + 1} ${Math.floor(rand() * 15) * 64 * 1024} 64k`, p.url(name)], { timeoutMs: 30_000 });
            if (w.code !== 0) result.problems.push(`seed ${seed}: fault ${i + 1}: writing to ${name} before removing it failed: ${w.stderr}`);
            const res = await fetch(`http://127.0.0.1:${p.httpPort}/volumes/remove`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name, force: true }) });
            if (res.status !== 200) result.problems.push(`seed ${seed}: fault ${i + 1}: POST /volumes/remove answered ${res.status}: ${await res.text()}`);
            else result.volumesRemoved++;
            break;
          }
          case 'testAtPoint': {
            // A copy at a random point of the replica's history: a prefix of the chain too.
            const r = replica;
            if (!r) break;
            const admin = (body: unknown) => fetch(`http://127.0.0.1:${r.httpPort}/test-failover`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
            const w = ((await r.status()).journal as { window: { fromSeq: number; toSeq: number } }).window;
            let seq = w.fromSeq + Math.floor(rand() * (w.toSeq - w.fromSeq + 1));
            // Half the time at a bookmark the replica holds, by name.
            const marks = ((await (await fetch(`http://127.0.0.1:${r.httpPort}/bookmarks`)).json()) as { bookmarks: { name: string; seq: number; state: string }[] }).bookmarks.filter((b) => b.state === 'retained');
            const mark = marks.length && rand() < 0.5 ? marks[Math.floor(rand() * marks.length)] : undefined;
            if (mark) seq = mark.seq;
            const res = await admin(mark ? { bookmark: mark.name } : { seq });
            if (res.status === 409) {
              const code = ((await res.json()) as { code: string }).code;
              // A bookmark is never inside a coalesced batch (the shipper ends batches at bookmarks).
              if ((code === 'JOURNAL_COALESCED_POINT' && !mark) || code === 'JOURNAL_OUTSIDE_WINDOW') result.pointsRefused++;
              else result.problems.push(`seed ${seed}: fault ${i + 1}: test failover at ${seq} refused: ${code}`);
              break;
            }
            if (res.status !== 200) {
              result.problems.push(`seed ${seed}: fault ${i + 1}: POST /test-failover {seq: ${seq}} answered ${res.status}: ${await res.text()}`);
              break;
            }
            const file = path.join(dir, 'point-copy.img');
            const read = await run('qemu-img', ['dd', '-f', 'raw', '-O', 'raw', `bs=${16 * MiB}`, 'count=1', `if=${r.url('chain-test')}`, `of=${file}`], { timeoutMs: 30_000 });
            if (read.code === 0) {
              result.pointCopies++;
              if (mark) result.bookmarkCopies++;
              const c = checkChainImage(readFileSync(file), N);
              if (c.error) {
                result.nonPrefixStates++;
                result.problems.push(`seed ${seed}: fault ${i + 1}: the test copy at sequence ${seq} is not a prefix: ${c.error}`);
              }
            } else result.problems.push(`seed ${seed}: fault ${i + 1}: reading the test copy at sequence ${seq} failed: ${read.stderr}`);
            const stopped = await admin({ action: 'stop' });
            if (stopped.status !== 200) result.problems.push(`seed ${seed}: fault ${i + 1}: stopping the test failover answered ${stopped.status}: ${await stopped.text()}`);
            break;
          }
          case 'bookmark': {
            // Named while the chain is being written; kept through kills and restarts, shipped to the replica.
            const p = primary!;
            const res = await fetch(`http://127.0.0.1:${p.httpPort}/bookmarks`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: `fault-${i + 1}` }) });
            if (res.status !== 201) result.problems.push(`seed ${seed}: fault ${i + 1}: POST /bookmarks answered ${res.status}: ${await res.text()}`);
            else result.bookmarks++;
            break;
          }
          case 'pauseShipping': {
            const p = primary!;
            const admin = (route: string) => fetch(`http://127.0.0.1:${p.httpPort}${route}`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: '{}' });
            const paused = await admin('/pause');
            if (paused.status !== 200) result.problems.push(`seed ${seed}: fault ${i + 1}: POST /pause answered ${paused.status}: ${await paused.text()}`);
            await pause(300 + rand() * 1200);
            const resumed = await admin('/resume');
            if (resumed.status !== 200) result.problems.push(`seed ${seed}: fault ${i + 1}: POST /resume answered ${resumed.status}: ${await resumed.text()}`);
            break;
          }
        }
      });
      // An image sync is a finding in itself: say right away which fault led to it and why
      // the primary decided on it (the replica's durable sequence against the retained journal,
      // or a sync cursor the replica held), with the replica's warnings.
      const syncs = primaries.flatMap((p) => p.logs.filter((l) => l.msg === 'replication link up; image sync needed'));
      if (syncs.length > syncsSeen) {
        const replicaWarnings = (replica?.logs ?? []).filter((l) => Number(l.level) >= 40).slice(-5).map(logLine);
        for (const l of syncs.slice(syncsSeen)) {
          const line = `seed ${seed}: fault ${i + 1} (${kind}) was followed by an image sync: ${logLine(l)}; replica warnings: ${replicaWarnings.join(' | ') || 'none'}`;
          log(`# ${line}`);
          result.problems.push(line);
        }
        syncsSeen = syncs.length;
      }
      if ((i + 1) % 25 === 0) log(`# faults ${i + 1}/${opts.faults}: acked ${acked}, replica reads ${result.replicaReads}`);
    }
    result.recordsAcked = acked;
    verifying = false;
    await verifier;
    await waitCaughtUp(primary, replica!, 120_000);
    await reader.stop();
    // Every removed volume: retired at the replica, its moved-aside copy equal to the primary's.
    type Removed = { name: string; movedTo: string };
    const removedAt = async (a: RunningAppliance) => ((await a.status()).removedVolumes as Removed[]) ?? [];
    const gone = await removedAt(primary);
    for (let t = 0; t < 600 && (await removedAt(replica!)).length < gone.length; t++) await pause(100);
    const retired = await removedAt(replica!);
    for (const g of gone) {
      const r = retired.find((x) => x.name === g.name);
      if (!r) result.problems.push(`seed ${seed}: volume ${g.name} was removed on the primary but the replica did not retire its copy`);
      else if (!readFileSync(path.join(g.movedTo, `${g.name}.img`)).equals(readFileSync(path.join(r.movedTo, `${g.name}.img`)))) result.problems.push(`seed ${seed}: the replica's retired copy of ${g.name} differs from the primary's removed volume`);
      else result.removedCopiesEqual++;
    }
    // A last verify, quiet and caught up: every byte compared, all equal.
    const last = await run(process.execPath, [CLI, 'verify', '--http', `127.0.0.1:${primary.httpPort}`, '--wait'], { timeoutMs: 120_000 });
    if (last.code !== 0) result.problems.push(`seed ${seed}: the verify after catch-up ended with exit code ${String(last.code)}: ${last.stdout}${last.stderr}`);
    // No acknowledged write lost on the primary, and it is a chain prefix too.
    const pImg = await readVolume(primary, 'chain', path.join(dir, 'primary.img'));
    const pc = checkChainImage(pImg, N);
    if (pc.error) result.problems.push(`seed ${seed}: primary: ${pc.error}`);
    if (pc.top < acked) {
      result.lostWrites = acked - pc.top;
      result.problems.push(`seed ${seed}: primary holds records up to ${pc.top}, ${acked} were acknowledged`);
    }
    const rImg = await readVolume(replica!, 'chain', path.join(dir, 'replica.img'));
    result.imagesEqual = pImg.equals(rImg);
    if (!result.imagesEqual) {
      let i = 0;
      while (pImg[i] === rImg[i]) i++;
      const b = Math.floor(i / BLOCK);
      const desc = (img: Buffer) => (img.toString('ascii', b * BLOCK, b * BLOCK + 5) === 'CHAIN' ? `record ${img.readUInt32BE(b * BLOCK + 8)}` : `bytes ${img.subarray(b * BLOCK, b * BLOCK + 8).toString('hex')}`);
      result.problems.push(`seed ${seed}: images differ after catch-up at block ${b}: primary ${desc(pImg)}, replica ${desc(rImg)} (chain tops ${pc.top}/${checkChainImage(rImg, N).top})`);
    }
    for (const p of primaries) result.fullResyncs += p.logs.filter((l) => l.msg === 'sync start').length;
    if (result.fullResyncs) result.problems.push(`seed ${seed}: ${result.fullResyncs} full resyncs`);
  } finally {
    verifying = false;
    await verifier;
    await reader.stop();
    await primary?.stop().catch(() => undefined);
    await replica?.stop().catch(() => undefined);
    await proxy.close();
    removeDir(dir);
  }
  return result;
}

export function formatResult(r: CampaignResult): string {
  const kinds = FAULT_KINDS.map((k) => `${k} ${r.faults[k]}`).join(', ');
  return [
    `fault campaign, seed ${r.seed}: ${r.faultsTotal} faults injected (${kinds})`,
    `  chain records acknowledged ${r.recordsAcked}, replica reads checked ${r.replicaReads}`,
    `  data lost ${r.lostWrites}, non-prefix states ${r.nonPrefixStates}, crashes ${r.crashes}, full resyncs ${r.fullResyncs}, images equal ${r.imagesEqual}`,
    `  online verify during the faults: ${r.verifyRuns} runs done, ${(r.verifiedBytes / MiB).toFixed(0)} MiB compared, ${r.verifyDifferences} differences`,
    `  volumes removed: ${r.volumesRemoved}, retired at the replica equal to the primary's: ${r.removedCopiesEqual}`,
    `  test copies at an earlier point: ${r.pointCopies} read (each a chain prefix; ${r.bookmarkCopies} at a bookmark, of ${r.bookmarks} taken), ${r.pointsRefused} points refused (coalesced or trimmed meanwhile)`,
  ].join('\n');
}
