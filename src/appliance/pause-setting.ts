/**
 * An operator's pause of shipping (`offsite pause`, POST /pause) outlives the process: a primary
 * restarted during a maintenance window stays paused until `offsite resume`. Saved in the data
 * directory; a site that becomes a replica drops it (a pause belongs to the primary that shipped).
 * A file that is not a pause is reported and removed: shipping is what protects the data, so a
 * damaged file never keeps a site from replicating.
 */
import type { ReplicationPause } from './replication';
import { RuntimeSetting } from './runtime-setting';

function isPause(v: unknown): v is ReplicationPause {
  const p = v as ReplicationPause;
  return !!p && typeof p === 'object' && typeof p.pausedAt === 'string' && Number.isFinite(Date.parse(p.pausedAt)) && typeof p.reason === 'string';
}

const setting = (dataDir: string) => new RuntimeSetting(dataDir, 'pause', isPause);

/** The saved pause, if any; `unreadable`: there was a file, not a pause (now removed). */
export async function savedPause(dataDir: string): Promise<ReplicationPause | 'unreadable' | undefined> {
  const { change, dropped } = await setting(dataDir).starting(() => true);
  return change ? { pausedAt: change.pausedAt, reason: change.reason } : dropped === undefined ? undefined : 'unreadable';
}

export function savePause(dataDir: string, pause: ReplicationPause): Promise<void> {
  return setting(dataDir).save(pause);
}

export function clearPause(dataDir: string): Promise<void> {
  return setting(dataDir).clear();
}
