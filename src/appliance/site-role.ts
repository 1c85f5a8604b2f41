/**
 * The role a data directory was last switched to by `offsite promote` / `offsite demote`. It
 * outlives the process: a promoted site restarted with its original flags stays a primary, a
 * demoted one stays a replica. Flags give only the initial role of a new site.
 */
import path from 'node:path';
import { readJsonFile, writeJsonFile } from '../common/json-file';
import { formatHostPort, parseHostPort } from '../common/units';
import type { ApplianceConfig } from './config';

export interface RoleOverride {
  role: 'primary' | 'replica';
  replicateTo?: string;
  replicationListen?: string;
  changedAt: string;
  reason: 'promote' | 'demote' | 'replicate-to';
}

const file = (dataDir: string) => path.join(dataDir, 'state', 'role.json');

export async function readRoleOverride(dataDir: string): Promise<RoleOverride | undefined> {
  return (await readJsonFile(file(dataDir))) as RoleOverride | undefined;
}

export function writeRoleOverride(dataDir: string, o: RoleOverride): Promise<void> {
  return writeJsonFile(file(dataDir), o);
}

/** The configuration for a role switch (keeping every bound address as it is now). */
export function withRole(config: ApplianceConfig, o: Pick<RoleOverride, 'role' | 'replicateTo' | 'replicationListen'>): ApplianceConfig {
  return {
    ...config,
    role: o.role,
    // A replica learns its volumes from the primary; a promoted replica serves what it has.
    volumes: o.role === 'replica' ? [] : config.volumes.map((v) => ({ name: v.name, readOnly: v.readOnly })),
    replication: {
      ...config.replication,
      replicateTo: o.role === 'primary' && o.replicateTo ? parseHostPort(o.replicateTo, 'replicate-to') : undefined,
      listen: o.role === 'replica' && o.replicationListen ? parseHostPort(o.replicationListen, 'replication-listen') : undefined,
    },
  };
}

export function describeRole(c: ApplianceConfig): string {
  if (c.role === 'primary') return c.replication.replicateTo ? `primary replicating to ${formatHostPort(c.replication.replicateTo)}` : 'primary (no replica)';
  return `replica listening on ${c.replication.listen ? formatHostPort(c.replication.listen) : '?'}`;
}
