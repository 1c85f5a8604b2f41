/**
 * Debian's tgtd, started side by side with offsite for comparisons: one target serving a
 * sparse file at LUN 1 (tgt's LUN 0 is its controller).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, ftruncateSync } from 'node:fs';
import net from 'node:net';
import { run } from './exec';

export const TGT_TARGET = 'iqn.2026-11.dev.tgt:bench';

export interface RunningTgt {
  port: number;
  url: string;
  /** tgtd's process id. */
  pid: number;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`tgtd did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startTgt(imagePath: string, sizeBytes: number): Promise<RunningTgt> {
  const fd = openSync(imagePath, 'a');
  ftruncateSync(fd, sizeBytes);
  closeSync(fd);
  const port = await freePort();
  const control = 100 + (port % 900);
  const proc: ChildProcess = spawn('tgtd', ['-f', '--iscsi', `portal=127.0.0.1:${port}`, '-C', String(control)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  await waitForPort(port, 10_000);
  const adm = async (...args: string[]) => {
    const r = await run('tgtadm', ['-C', String(control), '--lld', 'iscsi', ...args]);
    if (r.code !== 0) throw new Error(`tgtadm ${args.join(' ')} failed: ${r.stderr} ${stderr}`);
  };
  await adm('--op', 'new', '--mode', 'target', '--tid', '1', '-T', TGT_TARGET);
  await adm('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', imagePath);
  await adm('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
  return {
    port,
    url: `iscsi://127.0.0.1:${port}/${TGT_TARGET}/1`,
    pid: proc.pid!,
    stop: async () => {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}
