/**
 * Small JSON state files (role, lineage, run-time settings): written whole to a temporary file,
 * synced, then renamed over the old one, so a crash leaves either the old or the new content.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';

export async function writeJsonFile(file: string, value: unknown): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(value, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await syncPath(path.dirname(file)); // the rename durable too (a power cut keeps the new content)
}

/** Remove a state file (gone already: nothing to do), the removal durable like writeJsonFile's rename. */
export async function removeJsonFile(file: string): Promise<void> {
  try {
    await fsp.unlink(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  await syncPath(path.dirname(file));
}

/** fsync a file or a directory (its entries) by path. */
export async function syncPath(p: string): Promise<void> {
  const fh = await fsp.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The parsed file, or undefined when it does not exist. */
export async function readJsonFile(file: string): Promise<unknown> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as unknown;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
