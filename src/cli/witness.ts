/** `offsite witness`: the third party that decides which site may accept writes (see appliance/witness.ts). */
import type { Command } from 'commander';
import { readSecretFile } from '../appliance/config';
import { startWitness, witnessLeaseMs, type RunningWitness } from '../appliance/witness';
import { parseDuration, parseHostPort } from '../common/units';
import { createLogger } from '../ops/logging';
import { witnessMetrics } from '../ops/metrics';
import { fail } from './exit';

export function register(program: Command): void {
  program
    .command('witness')
    .description('run the witness for automatic takeover: the primary keeps a lease, a replica may take over only once it expired')
    .requiredOption('--listen <host:port>', 'address the sites reach the witness on')
    .option('--lease <duration>', 'lease length (default: OFFSITE_WITNESS_LEASE_MS or 6s); the sites must use the same')
    .option('--key-file <file>', 'the key the sites give as --witness-key (offsite keygen --witness-key FILE; or OFFSITE_WITNESS_KEY): only signed requests count, answers are signed')
    .option('--state <file>', 'keep the lease holder and epochs in this file (or OFFSITE_WITNESS_STATE), so a restarted witness still refuses a site the lease moved on from; without it the witness remembers nothing across restarts')
    .option('--log-level <level>', 'trace, debug, info, warn, error (default info)')
    .action(async (opts: { listen: string; lease?: string; keyFile?: string; state?: string; logLevel?: string }) => {
      let w: RunningWitness | undefined;
      const metrics = witnessMetrics(() => w);
      const logger = createLogger(opts.logLevel ?? 'info');
      try {
        const hp = parseHostPort(opts.listen, '--listen');
        const leaseMs = opts.lease ? parseDuration(opts.lease, '--lease') : witnessLeaseMs();
        const keyFile = opts.keyFile ?? (process.env.OFFSITE_WITNESS_KEY || undefined);
        const key = keyFile ? readSecretFile(keyFile, 'key-file', 'keyFile') : undefined;
        const stateFile = opts.state ?? (process.env.OFFSITE_WITNESS_STATE || undefined);
        w = await startWitness(hp.host, hp.port, { leaseMs, logger, key, metrics: metrics.render, stateFile });
        logger.info({ listen: `${w.address.address}:${w.address.port}`, leaseMs, authenticated: !!key, stateFile }, 'witness ready');
        if (!key) logger.warn('witness without --key-file: anyone who reaches this address can take or keep the lease (offsite keygen --witness-key FILE, then --key-file here and --witness-key at both sites)');
      } catch (e) {
        fail(e, 'offsite witness');
      }
      const stop = () => void w!.close().then(() => process.exit(0));
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
}
