/**
 * Load (issue 6): concurrent initiator sessions over several volumes while replicating. Each
 * session owns a region of a volume and loops writing random patterns and reading them back
 * (qemu-io verifies). Sampled: the appliances' memory (RSS) and the primary's RPO. Online verify
 * runs over and over meanwhile (at 64 MB/s, as an operator would cap it), and must never report a
 * difference. At the end: no I/O errors, memory bounded, RPO held, replica images equal the
 * primary's.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { removeDir, tempDir, type RunningAppliance } from '../helpers/appliance';
import { freePort, readVolume, startPrimary, startReplica, verifyOverAndOver, waitCaughtUp } from '../helpers/replication';

const MiB = 1024 * 1024;

export interface LoadResult {
  sessions: number;
  volumes: number;
  seconds: number;
  ioErrors: number;
  verifyFailures: number;
  commands: number;
  bytesWritten: number;
  maxRssMiB: { primary: number; replica: number };
  rssGrowthMiB: { primary: number; replica: number };
  maxRpoSeconds: number;
  rpoTargetSeconds: number;
  imagesEqual: boolean;
  /** Online verify runs that ended during the load, bytes compared and not compared, differences reported. */
  verifyRuns: number;
  verifiedBytes: number;
  unverifiedBytes: number;
  verifyDifferences: number;
  problems: string[];
}

function rssMiB(app: RunningAppliance): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${app.proc.pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

function qemuIo(url: string, cmds: string[]): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), url], { timeout: 120_000, maxBuffer: 16 * MiB }, (err, stdout, stderr) =>
      resolve({ ok: !err, out: stdout + stderr }),
    );
  });
}

export async function runLoad(opts: { sessions: number; volumes: number; seconds: number; rpoTargetSeconds?: number; log?: (s: string) => void }): Promise<LoadResult> {
  const log = opts.log ?? (() => undefined);
  const dir = tempDir('offsite-load-');
  const volSize = 32 * MiB;
  const names = Array.from({ length: opts.volumes }, (_, i) => `load${i}`);
  const rpoTarget = opts.rpoTargetSeconds ?? 10;
  const replPort = await freePort();
  const replica = await startReplica(path.join(dir, 'b'), replPort);
  const primary = await startPrimary(path.join(dir, 'a'), names.map((n) => `${n}:${volSize}`), replPort, ['--rpo-target', `${rpoTarget}s`]);
  const result: LoadResult = {
    sessions: opts.sessions,
    volumes: opts.volumes,
    seconds: opts.seconds,
    ioErrors: 0,
    verifyFailures: 0,
    commands: 0,
    bytesWritten: 0,
    maxRssMiB: { primary: 0, replica: 0 },
    rssGrowthMiB: { primary: 0, replica: 0 },
    maxRpoSeconds: 0,
    rpoTargetSeconds: rpoTarget,
    imagesEqual: false,
    verifyRuns: 0,
    verifiedBytes: 0,
    unverifiedBytes: 0,
    verifyDifferences: 0,
    problems: [],
  };
  const end = Date.now() + opts.seconds * 1000;
  let stop = false;
  const baseline = { primary: 0, replica: 0 };
  const sampler = (async () => {
    let n = 0;
    while (!stop) {
      const p = rssMiB(primary);
      const r = rssMiB(replica);
      // Baseline after the first 10% of the run (caches and pools filled).
      if (n++ === 3) Object.assign(baseline, { primary: p, replica: r });
      result.maxRssMiB.primary = Math.max(result.maxRssMiB.primary, p);
      result.maxRssMiB.replica = Math.max(result.maxRssMiB.replica, r);
      const st = await primary.status().catch(() => undefined);
      if (st) result.maxRpoSeconds = Math.max(result.maxRpoSeconds, Number(st.rpoSeconds ?? 0));
      await new Promise((res) => setTimeout(res, Math.max(500, (opts.seconds * 1000) / 40)));
    }
  })();
  const verifier = verifyOverAndOver(() => primary, () => !stop && Date.now() < end, (v) => {
    if (v.state === 'done') result.verifyRuns++;
    result.verifiedBytes += v.checkedBytes;
    result.unverifiedBytes += v.unverifiedBytes;
    if (v.mismatchedChunks) {
      result.verifyDifferences += v.mismatchedChunks;
      result.problems.push(`online verify reported ${v.mismatchedChunks} differing chunks: ${JSON.stringify(v.mismatches).slice(0, 400)}`);
    }
  }, { rate: '64MB/s' });
  const perVolume = Math.ceil(opts.sessions / opts.volumes);
  const region = Math.floor(volSize / perVolume / MiB) * MiB;
  const session = async (s: number) => {
    const vol = names[s % opts.volumes];
    const base = Math.floor(s / opts.volumes) * region;
    let round = 0;
    while (Date.now() < end) {
      const cmds: string[] = [];
      const writes: { off: number; len: number; pat: number }[] = [];
      for (let i = 0; i < 16; i++) {
        const len = [4096, 65536, 131072][(s + i + round) % 3];
        const off = base + Math.floor(Math.random() * ((region - len) / 4096)) * 4096;
        const pat = 1 + ((s * 31 + i * 7 + round) % 250);
        cmds.push(`write -P ${pat} ${off} ${len}`);
        writes.push({ off, len, pat });
      }
      // Read back what the last writes of each range left (later writes may overlap earlier ones).
      const last = writes[writes.length - 1];
      cmds.push(`read -P ${last.pat} ${last.off} ${last.len}`);
      const r = await qemuIo(primary.url(vol), cmds);
      result.commands += cmds.length;
      result.bytesWritten += writes.reduce((a, w) => a + w.len, 0);
      if (!r.ok || /error/i.test(r.out)) {
        result.ioErrors++;
        result.problems.push(`session ${s}: ${r.out.slice(-300)}`);
      }
      if (/Pattern verification failed/.test(r.out)) result.verifyFailures++;
      round++;
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.sessions }, (_, s) => session(s)));
    stop = true;
    await sampler;
    await verifier;
    result.rssGrowthMiB.primary = Math.max(0, result.maxRssMiB.primary - baseline.primary);
    result.rssGrowthMiB.replica = Math.max(0, result.maxRssMiB.replica - baseline.replica);
    log(`# load: ${result.commands} commands, ${(result.bytesWritten / MiB).toFixed(0)} MiB written; catching up`);
    await waitCaughtUp(primary, replica, 300_000);
    result.imagesEqual = true;
    for (const n of names) {
      const a = await readVolume(primary, n, path.join(dir, `${n}.a.img`));
      const b = await readVolume(replica, n, path.join(dir, `${n}.b.img`));
      if (!a.equals(b)) {
        result.imagesEqual = false;
        result.problems.push(`volume ${n}: replica differs`);
      }
    }
    if (result.maxRpoSeconds > rpoTarget) result.problems.push(`RPO reached ${result.maxRpoSeconds} s, target ${rpoTarget} s`);
    if (result.verifyFailures) result.problems.push(`${result.verifyFailures} read-back verifications failed`);
  } finally {
    stop = true;
    await sampler;
    await verifier;
    await primary.stop();
    await replica.stop();
    removeDir(dir);
  }
  return result;
}

export function formatLoad(r: LoadResult): string {
  return [
    `load: ${r.sessions} sessions x ${r.volumes} volumes for ${(r.seconds / 60).toFixed(1)} min (${((r.sessions * r.seconds) / 60).toFixed(1)} session-minutes): ${r.commands} commands, ${(r.bytesWritten / MiB).toFixed(0)} MiB written`,
    `  I/O errors ${r.ioErrors}, verification failures ${r.verifyFailures}, max RPO ${r.maxRpoSeconds.toFixed(2)} s (target ${r.rpoTargetSeconds} s), images equal ${r.imagesEqual}`,
    `  online verify meanwhile: ${r.verifyRuns} runs done, ${(r.verifiedBytes / MiB).toFixed(0)} MiB compared, ${(r.unverifiedBytes / MiB).toFixed(1)} MiB not compared, ${r.verifyDifferences} differences`,
    `  RSS max primary ${r.maxRssMiB.primary.toFixed(0)} MiB (+${r.rssGrowthMiB.primary.toFixed(0)} after warm-up), replica ${r.maxRssMiB.replica.toFixed(0)} MiB (+${r.rssGrowthMiB.replica.toFixed(0)})`,
  ].join('\n');
}
