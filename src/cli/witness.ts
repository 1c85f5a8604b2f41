/** `offsite witness`: the third party that decides which site may accept writes (see appliance/witness.ts). */
import type { Command } from 'commander';
import { startWitness, witnessLeaseMs } from '../appliance/witness';
import { parseDuration, parseHostPort } from '../common/units';
import { createLogger } from '../ops/logging';
import { fail } from './exit';

export function register(program: Command): void {
  program
    .command('witness')
    .description('run the witness for automatic takeover: the primary keeps a lease, a replica may take over only once it expired')
    .requiredOption('--listen <host:port>', 'address the sites reach the witness on')
    .option('--lease <duration>', 'lease length (default: OFFSITE_WITNESS_LEASE_MS or 6s); the sites must use the same')
    .option('--log-level <level>', 'trace, debug, info, warn, error (default info)')
    .action(async (opts: { listen: string; lease?: string; logLevel?: string }) => {
      let w: Awaited<ReturnType<typeof startWitness>>;
      const logger = createLogger(opts.logLevel ?? 'info');
      try {
        const hp = parseHostPort(opts.listen, '--listen');
        const leaseMs = opts.lease ? parseDuration(opts.lease, '--lease') : witnessLeaseMs();
        w = await startWitness(hp.host, hp.port, { leaseMs, logger });
        logger.info({ listen: `${w.address.address}:${w.address.port}`, leaseMs }, 'witness ready');
      } catch (e) {
        fail(e, 'offsite witness');
      }
      const stop = () => void w.close().then(() => process.exit(0));
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
}
