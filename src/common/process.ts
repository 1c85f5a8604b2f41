import { readFile, unlink } from 'node:fs/promises';

/** Whether a process with this pid exists (one we may not signal counts: it is alive, someone else's). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The live process other than this one that a pid file names, if any. */
export async function pidFileOwner(file: string): Promise<number | undefined> {
  const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
  return processAlive(pid) ? pid : undefined;
}

/** Remove a pid file if it names this process (another process's is left alone). */
export async function removeOwnPidFile(file: string): Promise<void> {
  const text = await readFile(file, 'utf8').catch(() => '');
  if (Number(text.trim()) === process.pid) await unlink(file).catch(() => undefined);
}
