/** `offsite serve`: run one appliance until SIGTERM/SIGINT. */
import type { Command } from 'commander';
import { Appliance } from '../appliance/appliance';
import { loadConfigFile, resolveConfig, type ConfigFile, type ConfigFlags } from '../appliance/config';
import { formatHostPort } from '../common/units';
import { startHttp } from '../ops/http';
import { createLogger } from '../ops/logging';
import { createMetrics } from '../ops/metrics';
import { fail } from './exit';

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function register(program: Command): void {
  program
    .command('serve')
    .description('run one appliance: iSCSI target, journal, replication, HTTP status and metrics')
    .option('--config <file>', 'site configuration file (YAML); flags override it, OFFSITE_* environment variables override both')
    .option('--role <role>', 'primary or replica (default primary)')
    .option('--data <dir>', 'data directory (volumes, journal, state)')
    .option('--volume <name:size>', 'a volume to serve, created on first start (repeatable), e.g. vol1:1G', collect)
    .option('--iscsi <host:port>', 'iSCSI portal address (default 0.0.0.0:3260)')
    .option('--http <host:port>', 'HTTP status and metrics address (default 127.0.0.1:9464)')
    .option('--target-prefix <iqn>', 'target name prefix; each volume is <prefix>:<volume>')
    .option('--journal-max <size>', 'journal size cap; older records are folded, writes never stall')
    .option('--journal-retain <duration>', 'history kept for point-in-time replay, e.g. 1h')
    .option('--no-journal', 'benchmark only: serve the image files without the write-ahead journal')
    .option('--nop-interval <duration>', 'ping an idle initiator after this long, 0 to never ping (default 5s)')
    .option('--nop-timeout <duration>', 'drop a connection whose ping stays unanswered this long (default 30s)')
    .option('--replicate-to <host:port>', 'primary: ship the journal to the replica listening there')
    .option('--replication-listen <host:port>', 'replica: accept the primary\'s replication connection here')
    .option('--max-bandwidth <rate>', 'primary: cap the replication link, e.g. 10MB/s or 100Mbit (changeable with POST /bandwidth)')
    .option('--rpo-target <duration>', 'primary: recovery-point target, e.g. 30s')
    .option('--rpo-policy <policy>', 'primary: coalesce (default), throttle or alert when the RPO nears its target')
    .option('--log-level <level>', 'trace, debug, info, warn, error (default info)')
    .action(async (opts: ConfigFlags & { config?: string }) => {
      let config;
      try {
        const file: ConfigFile = opts.config ? loadConfigFile(opts.config) : {};
        config = resolveConfig(file, opts);
      } catch (e) {
        fail(e, 'offsite serve');
      }
      const logger = createLogger(config.logLevel);
      const metrics = createMetrics();
      let app: Appliance;
      try {
        app = await Appliance.start(config, logger, metrics.hooks);
      } catch (e) {
        logger.flush?.();
        fail(e, 'offsite serve');
      }
      metrics.attach(app);
      let httpServer;
      try {
        httpServer = await startHttp(config.http.host, config.http.port, { status: () => app.status(), metrics: metrics.registry, admin: app.admin() }, logger);
      } catch (e) {
        await app.stop();
        fail(e, 'offsite serve: http');
      }
      const status = app.status();
      logger.info({ http: formatHostPort({ host: config.http.host, port: httpServer.address.port }), volumes: status.volumes.map((v) => v.targetName) }, 'ready');
      let stopping = false;
      const shutdown = (signal: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ signal }, 'shutting down');
        const hard = setTimeout(() => {
          logger.error('shutdown took too long; exiting');
          process.exit(1);
        }, 20_000);
        hard.unref();
        void (async () => {
          await httpServer.close();
          await app.stop();
          logger.flush?.();
          setImmediate(() => process.exit(0));
        })();
      };
      process.on('SIGTERM', () => shutdown('SIGTERM'));
      process.on('SIGINT', () => shutdown('SIGINT'));
    });
}
