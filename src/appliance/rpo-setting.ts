/**
 * The RPO target and policy changed at run time (`offsite rpo`, POST /rpo), e.g. `alert` instead
 * of `throttle` for a planned bulk load, outlive the process (see runtime-setting.ts): kept across
 * restarts until the configured target or policy changes, or `offsite rpo --reset` returns to them.
 */
import { isRpoPolicy, type RpoPolicy } from '../replication/rpo';
import { RuntimeSetting, type SettingSource } from './runtime-setting';

export interface RpoSetting {
  targetMs: number;
  policy: RpoPolicy;
}

export interface RpoChange extends RpoSetting {
  /** The configured target and policy when the change was made. */
  configuredTargetMs: number;
  configuredPolicy: RpoPolicy;
  changedAt: string;
}

function isChange(v: unknown): v is RpoChange {
  const c = v as RpoChange;
  const ms = (n: unknown) => typeof n === 'number' && Number.isFinite(n) && n >= 0;
  return !!c && typeof c === 'object' && ms(c.targetMs) && ms(c.configuredTargetMs) && isRpoPolicy(c.policy) && isRpoPolicy(c.configuredPolicy) && typeof c.changedAt === 'string';
}

const setting = (dataDir: string) => new RuntimeSetting(dataDir, 'rpo', isChange);

/** The target and policy to start with, and where they come from. */
export async function startingRpo(dataDir: string, configured: RpoSetting): Promise<RpoSetting & { source: SettingSource; change?: RpoChange; dropped?: RpoChange | 'unreadable' }> {
  const { change, dropped } = await setting(dataDir).starting((c) => c.configuredTargetMs === configured.targetMs && c.configuredPolicy === configured.policy);
  return change ? { targetMs: change.targetMs, policy: change.policy, source: 'runtime', change } : { ...configured, source: 'configured', dropped };
}

export function saveRpoChange(dataDir: string, change: RpoChange): Promise<void> {
  return setting(dataDir).save(change);
}

export function clearRpoChange(dataDir: string): Promise<void> {
  return setting(dataDir).clear();
}
