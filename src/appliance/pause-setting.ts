/**
 * An operator's pause of shipping (`offsite pause`, POST /pause) outlives the process: a primary
 * restarted during a maintenance window stays paused until `offsite resume`. Saved in the data
 * directory; a site that becomes a replica drops it (a pause belongs to the primary that shipped).
 * A file that is not a pause is reported and removed: shipping is what protects the data, so a
 * damaged file never keeps a site from replicating.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { readJsonFile, writeJsonFile } from '../common/json-file';
import type { ReplicationPause } from './replication';

const file = (dataDir: string) => path.join(dataDir, 'state', 'pause.json');

function isPause(v: unknown): v is ReplicationPause {
  const p = v as ReplicationPause;
  return !!p && typeof p === 'object' && typeof p.pausedAt === 'string' && Number.isFinite(Date.parse(p.pausedAt)) && typeof p.reason === 'string';
}

/** The saved pause, if any; `unreadable`: there was a file, not a pause (now removed). */
export async function savedPause(dataDir: string): Promise<ReplicationPause | 'unreadable' | undefined> {
  let saved: unknown;
  try {
    saved = await readJsonFile(file(dataDir));
  } catch {
    saved = null;
  }
  if (saved === undefined) return undefined;
  if (isPause(saved)) return { pausedAt: saved.pausedAt, reason: saved.reason };
  await clearPause(dataDir);
  return 'unreadable';
}

export function savePause(dataDir: string, pause: ReplicationPause): Promise<void> {
  return writeJsonFile(file(dataDir), pause);
}

export async function clearPause(dataDir: string): Promise<void> {
  await fsp.rm(file(dataDir), { force: true });
}
