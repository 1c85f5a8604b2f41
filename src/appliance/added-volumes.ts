/**
 * Volumes added to a running primary (`offsite add-volume`, POST /volumes) are served again after
 * a restart even when the configuration lists its volumes (`--volume`, the file, the
 * environment) and does not name them yet: their names are kept in the data directory. With no
 * volume configured every existing volume is served anyway.
 */
import path from 'node:path';
import { readJsonFile, writeJsonFile } from '../common/json-file';
import { VOLUME_NAME_RE } from '../volume/file-volume';

const file = (dataDir: string) => path.join(dataDir, 'state', 'added-volumes.json');

/** The names of the volumes added at run time (a damaged file: none, and `unreadable`). */
export async function addedVolumes(dataDir: string): Promise<{ names: string[]; unreadable?: boolean }> {
  let v: unknown;
  try {
    v = await readJsonFile(file(dataDir));
  } catch {
    return { names: [], unreadable: true };
  }
  if (v === undefined) return { names: [] };
  if (!Array.isArray(v) || !v.every((n) => typeof n === 'string' && VOLUME_NAME_RE.test(n))) return { names: [], unreadable: true };
  return { names: v as string[] };
}

export async function recordAddedVolume(dataDir: string, name: string): Promise<void> {
  const { names } = await addedVolumes(dataDir);
  if (!names.includes(name)) await writeJsonFile(file(dataDir), [...names, name]);
}

/** A removed volume is no longer served at start (offsite remove-volume). */
export async function forgetAddedVolume(dataDir: string, name: string): Promise<void> {
  const { names, unreadable } = await addedVolumes(dataDir);
  if (!unreadable && names.includes(name)) await writeJsonFile(file(dataDir), names.filter((n) => n !== name));
}
