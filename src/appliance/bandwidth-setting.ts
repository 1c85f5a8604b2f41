/**
 * A replication bandwidth cap changed at run time (`offsite bandwidth`, POST /bandwidth) outlives
 * the process: it is saved in the data directory with the cap configured when it was made, and a
 * restart keeps it as long as the configuration still says the same. When the operator has since
 * changed the configured cap (flag, file or environment), that newer decision wins and the saved
 * change is dropped. `offsite bandwidth --reset` returns to the configured cap.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { readJsonFile, writeJsonFile } from '../common/json-file';

export interface BandwidthChange {
  bytesPerSec: number;
  /** The configured cap when the change was made. */
  configuredBytesPerSec: number;
  changedAt: string;
}

export type BandwidthSource = 'configured' | 'runtime';

const file = (dataDir: string) => path.join(dataDir, 'state', 'bandwidth.json');

function isChange(v: unknown): v is BandwidthChange {
  const c = v as BandwidthChange;
  return !!c && typeof c === 'object' && Number.isFinite(c.bytesPerSec) && c.bytesPerSec >= 0 && Number.isFinite(c.configuredBytesPerSec) && typeof c.changedAt === 'string';
}

/**
 * The cap to start with. `dropped`: a saved change the configuration has overtaken (or a file
 * that is not one), now removed.
 */
export async function startingBandwidth(dataDir: string, configured: number): Promise<{ bytesPerSec: number; source: BandwidthSource; change?: BandwidthChange; dropped?: BandwidthChange | 'unreadable' }> {
  let saved: unknown;
  try {
    saved = await readJsonFile(file(dataDir));
  } catch {
    saved = null;
  }
  if (saved === undefined) return { bytesPerSec: configured, source: 'configured' };
  if (isChange(saved) && saved.configuredBytesPerSec === configured) return { bytesPerSec: saved.bytesPerSec, source: 'runtime', change: saved };
  await clearBandwidthChange(dataDir);
  return { bytesPerSec: configured, source: 'configured', dropped: isChange(saved) ? saved : 'unreadable' };
}

export function saveBandwidthChange(dataDir: string, change: BandwidthChange): Promise<void> {
  return writeJsonFile(file(dataDir), change);
}

export async function clearBandwidthChange(dataDir: string): Promise<void> {
  await fsp.rm(file(dataDir), { force: true });
}
