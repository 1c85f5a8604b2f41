/**
 * Start the real appliance (`node dist/src/cli/main.js serve`, the same entry command as the
 * Dockerfile) on ephemeral ports and learn its addresses from its JSON log.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import type { TestContext } from 'node:test';

/** Every appliance a test file started; whatever a failed test left running is killed at the end. */
const running = new Set<ChildProcess>();
// Only under the test runner (importing node:test elsewhere, e.g. in the bench, starts a reporter).
if (process.env.NODE_TEST_CONTEXT) {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require('node:test') as typeof import('node:test')).after(() => {
    for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
}

export const CLI = path.resolve(__dirname, '../../src/cli/main.js');
export const TARGET_PREFIX = 'iqn.2026-11.dev.offsite';
/** Admin API token for the appliances tests start (and the CLI commands they run inherit it). */
export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef';
process.env.OFFSITE_ADMIN_TOKEN ??= ADMIN_TOKEN;

export interface RunningAppliance {
  proc: ChildProcess;
  dataDir: string;
  host: string;
  iscsiPort: number;
  httpPort: number;
  logs: Record<string, unknown>[];
  /** What the process wrote to stderr (a crash's stack trace). */
  stderr(): string;
  url(volume: string, lun?: number, creds?: string): string;
  status(): Promise<Record<string, unknown>>;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export function tempDir(prefix = 'offsite-test-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function startAppliance(
  opts: {
    dataDir?: string;
    volumes?: string[];
    args?: string[];
    env?: NodeJS.ProcessEnv;
    timeoutMs?: number;
    /** Address to serve iSCSI and HTTP on (default 127.0.0.1). */
    host?: string;
    /** Run under a wrapper, e.g. ['ip', 'netns', 'exec', 'ns1']. */
    wrapper?: string[];
  } = {},
): Promise<RunningAppliance> {
  const dataDir = opts.dataDir ?? path.join(tempDir(), 'data');
  const host = opts.host ?? '127.0.0.1';
  const args = [CLI, 'serve', '--data', dataDir, '--iscsi', `${host}:0`, '--http', `${host}:0`];
  for (const v of opts.volumes ?? ['vol1:64M']) args.push('--volume', v);
  args.push(...(opts.args ?? []));
  const [cmd, ...pre] = opts.wrapper?.length ? [...opts.wrapper, process.execPath] : [process.execPath];
  const proc = spawn(cmd, [...pre, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OFFSITE_LOG_FORMAT: 'json', ...opts.env } });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const ready = new Promise<{ iscsiPort: number; httpPort: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`appliance did not become ready; stderr: ${stderr}`)), opts.timeoutMs ?? 30_000);
    let iscsiPort = 0;
    readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg === 'appliance serving') iscsiPort = Number(String(rec.iscsi).split(':').pop());
      if (rec.msg === 'ready') {
        clearTimeout(timer);
        resolve({ iscsiPort, httpPort: Number(String(rec.http).split(':').pop()) });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`appliance exited with ${code} before ready; stderr: ${stderr}`));
    });
  });
  const { iscsiPort, httpPort } = await ready;
  return {
    proc,
    dataDir,
    host,
    iscsiPort,
    httpPort,
    logs,
    stderr: () => stderr,
    url: (volume, lun = 0, creds) => `iscsi://${creds ? `${creds}@` : ''}${host}:${iscsiPort}/${TARGET_PREFIX}:${volume}/${lun}`,
    status: async () => (await (await fetch(`http://${host}:${httpPort}/status`)).json()) as Record<string, unknown>,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
    kill: async (signal = 'SIGKILL') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** A fresh temp dir with a tmpfs of `size` mounted at <dir>/small, or undefined (test skipped) where mounting is not allowed. */
export function smallDisk(t: TestContext, size: string): { dir: string; mnt: string } | undefined {
  const dir = tempDir();
  const mnt = path.join(dir, 'small');
  mkdirSync(mnt);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  } catch (e) {
    removeDir(dir);
    t.skip(`cannot mount a tmpfs here (${(e as Error).message.split('\n')[0]}); this test needs root`);
    return undefined;
  }
  return { dir, mnt };
}
