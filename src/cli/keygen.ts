/** `offsite keygen`: the replication link's pre-shared key, the admin API token and the witness key, owner-only files. */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { Command } from 'commander';
import { OffsiteError } from '../common/errors';
import { newLinkKey } from '../replication/link-security';
import { fail } from './exit';

async function writeSecret(file: string, text: string, force: boolean): Promise<void> {
  try {
    await fsp.writeFile(file, text, { mode: 0o600, flag: force ? 'w' : 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new OffsiteError('KEY_EXISTS', `${file} exists; keep it (both sites must share it) or pass --force to replace it`);
    throw e;
  }
  await fsp.chmod(file, 0o600);
}

export function register(program: Command): void {
  program
    .command('keygen')
    .description('create the replication link key (copy the same file to both sites), an admin API token, and/or the witness key (the witness and both sites)')
    .option('--link-key <file>', 'write a TLS 1.3 pre-shared key for --link-key')
    .option('--admin-token <file>', 'write a bearer token for --admin-token-file and the admin commands (--token-file)')
    .option('--witness-key <file>', 'write the key the witness (--key-file) and both sites (--witness-key) share')
    .option('--force', 'overwrite existing files')
    .action(async (opts: { linkKey?: string; adminToken?: string; witnessKey?: string; force?: boolean }) => {
      try {
        if (!opts.linkKey && !opts.adminToken && !opts.witnessKey) throw new OffsiteError('USAGE', 'say what to create: --link-key FILE, --admin-token FILE and/or --witness-key FILE');
        if (opts.linkKey) {
          await writeSecret(opts.linkKey, JSON.stringify(newLinkKey(), null, 2) + '\n', !!opts.force);
          process.stdout.write(`link key written to ${opts.linkKey} (mode 600): give both sites the same file with --link-key\n`);
        }
        if (opts.adminToken) {
          await writeSecret(opts.adminToken, randomBytes(24).toString('base64url') + '\n', !!opts.force);
          process.stdout.write(`admin token written to ${opts.adminToken} (mode 600): serve --admin-token-file, and offsite promote/demote/bandwidth --token-file\n`);
        }
        if (opts.witnessKey) {
          await writeSecret(opts.witnessKey, randomBytes(32).toString('base64url') + '\n', !!opts.force);
          process.stdout.write(`witness key written to ${opts.witnessKey} (mode 600): offsite witness --key-file, and serve --witness-key at both sites\n`);
        }
      } catch (e) {
        fail(e, 'offsite keygen');
      }
    });
}
