/** `offsite witness` as a real process, its JSON log lines collected; started, ready, stopped. */
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { CLI } from './appliance';
import { until } from './wait';

export interface RunningWitness {
  proc: ChildProcess;
  port: number;
  logs: Record<string, unknown>[];
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Start it and wait for its ready line; on failure nothing is left running (node --test would hang). */
export async function startWitnessProcess(port: number, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<RunningWitness> {
  const proc = spawn(process.execPath, [CLI, 'witness', '--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OFFSITE_LOG_FORMAT: 'json', ...env } });
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
    try {
      logs.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      /* not JSON */
    }
  });
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((res) => proc.once('exit', res));
    proc.kill(signal);
    await exited;
  };
  try {
    await until('the witness to start', () => logs.some((l) => l.msg === 'witness ready'), 10_000, 50);
  } catch (e) {
    await stop('SIGKILL');
    throw new Error(`${(e as Error).message}\n${stderr}`);
  }
  return { proc, port, logs, stop };
}
