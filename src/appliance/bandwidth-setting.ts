/**
 * A replication bandwidth cap changed at run time (`offsite bandwidth`, POST /bandwidth) outlives
 * the process (see runtime-setting.ts): kept across restarts until the configured cap changes, or
 * `offsite bandwidth --reset` returns to it.
 */
import { RuntimeSetting, type SettingSource } from './runtime-setting';

export interface BandwidthChange {
  bytesPerSec: number;
  /** The configured cap when the change was made. */
  configuredBytesPerSec: number;
  changedAt: string;
}

export type BandwidthSource = SettingSource;

function isChange(v: unknown): v is BandwidthChange {
  const c = v as BandwidthChange;
  return !!c && typeof c === 'object' && Number.isFinite(c.bytesPerSec) && c.bytesPerSec >= 0 && Number.isFinite(c.configuredBytesPerSec) && typeof c.changedAt === 'string';
}

const setting = (dataDir: string) => new RuntimeSetting(dataDir, 'bandwidth', isChange);

/**
 * The cap to start with. `dropped`: a saved change the configuration has overtaken (or a file
 * that is not one), now removed.
 */
export async function startingBandwidth(dataDir: string, configured: number): Promise<{ bytesPerSec: number; source: BandwidthSource; change?: BandwidthChange; dropped?: BandwidthChange | 'unreadable' }> {
  const { change, dropped } = await setting(dataDir).starting((c) => c.configuredBytesPerSec === configured);
  return change ? { bytesPerSec: change.bytesPerSec, source: 'runtime', change } : { bytesPerSec: configured, source: 'configured', dropped };
}

export function saveBandwidthChange(dataDir: string, change: BandwidthChange): Promise<void> {
  return setting(dataDir).save(change);
}

export function clearBandwidthChange(dataDir: string): Promise<void> {
  return setting(dataDir).clear();
}
