/** `offsite serve`: run one appliance until SIGTERM/SIGINT. */
import type { Command } from 'commander';
import { Appliance, type PointRequest } from '../appliance/appliance';
import { readRoleOverride, withRole, writeRoleOverride, describeRole } from '../appliance/site-role';
import { OffsiteError } from '../common/errors';
import { loadConfigFile, resolveConfig, type ConfigFile, type ConfigFlags } from '../appliance/config';
import { formatHostPort } from '../common/units';
import { startHttp } from '../ops/http';
import type { VerifyRequest } from '../replication/verify';
import type { RpoSetting } from '../appliance/rpo-setting';

type ReplicationAdmin = ReturnType<Appliance['admin']>;
import { createLogger } from '../ops/logging';
import { createMetrics } from '../ops/metrics';
import { fail } from './exit';
import { OWNER_ONLY_UMASK, warnIfOpenToOthers } from './data-perms';

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
    .option('--http <host:port>', 'HTTP status, metrics and admin API address (default 127.0.0.1:9464)')
    .option('--metrics-listen <host:port>', 'also serve GET /status, /metrics and /healthz here, without the admin API (e.g. for Prometheus on another network)')
    .option('--http-tls-cert <file>', 'serve the HTTP API (and --metrics-listen) over HTTPS with this PEM certificate (chain)')
    .option('--http-tls-key <file>', "the certificate's PEM private key (chmod 600)")
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
    .option('--verify-every <duration>', 'primary: run an online verify against the replica this often, e.g. 7d (reports, never repairs; see offsite verify)')
    .option('--verify-rate <rate>', 'the scheduled verify runs read at most this much per second on each site, e.g. 50MB/s')
    .option('--link-key <file>', 'replication: TLS 1.3 pre-shared key file, the same at both sites (offsite keygen --link-key FILE)')
    .option('--insecure-link', 'replication: plain TCP, unauthenticated (only on a network you trust)')
    .option('--admin-token-file <file>', 'bearer token for the admin API (promote, demote, bandwidth, verify, pause, resume, ...); or OFFSITE_ADMIN_TOKEN')
    .option('--witness <host:port[,...]>', 'offsite witness(es): the primary keeps its lease (and fences itself when it loses both witness and replica); a replica may take over. Several (comma-separated, odd): a majority decides')
    .option('--witness-key <file>', 'the key shared with the witness and the other site (offsite keygen --witness-key FILE): lease requests and answers are authenticated')
    .option('--failover-after <duration>', 'replica: promote automatically when the primary has been silent this long and the witness agrees')
    .option('--log-level <level>', 'trace, debug, info, warn, error (default info)')
    .action(async (opts: ConfigFlags & { config?: string }) => {
      let config: ReturnType<typeof resolveConfig>;
      try {
        const file: ConfigFile = opts.config ? loadConfigFile(opts.config) : {};
        config = resolveConfig(file, opts);
      } catch (e) {
        fail(e, 'offsite serve');
      }
      // Every file this process makes under the data directory (images, journal segments and
      // its LevelDB index, state, split-off journals) is owner-only: they hold every byte written.
      process.umask(OWNER_ONLY_UMASK);
      const logger = createLogger(config.logLevel);
      await warnIfOpenToOthers(config.dataDir, (mode, msg) => logger.warn({ dataDir: config.dataDir, mode }, msg));
      const metrics = createMetrics();
      const override = await readRoleOverride(config.dataDir).catch(() => undefined);
      if (override && (override.role !== config.role || override.replicateTo || override.replicationListen)) {
        const before = describeRole(config);
        config = withRole(config, override);
        logger.warn({ flags: before, now: describeRole(config), since: override.changedAt, by: override.reason }, `the role was switched at run time (${override.reason}): this site runs as ${describeRole(config)}, not as the flags say`);
      }
      let app: Appliance;
      // eslint-disable-next-line prefer-const
      let admin: { promote(req: { force?: boolean; replicateTo?: string; reason?: string }): Promise<unknown> } & Record<string, unknown>;
      // Automatic takeover (replica with --failover-after) asks for the same promotion as the admin API.
      const hooks = { ...metrics.hooks, requestPromotion: (reason: string) => admin.promote({ force: false, reason }) };
      try {
        app = await Appliance.start(config, logger, hooks);
      } catch (e) {
        logger.flush?.();
        fail(e, 'offsite serve');
      }
      metrics.attach(app);
      let httpServer;
      let monitorServer: Awaited<ReturnType<typeof startHttp>> | undefined;
      try {
        // Role switches restart the appliance inside this process on the same addresses.
        let switching = false;
        const switchRole = async (o: { role: 'primary' | 'replica'; replicateTo?: string; replicationListen?: string; reason: 'promote' | 'demote' | 'replicate-to' }, before?: () => Promise<unknown>) => {
          if (switching) throw new OffsiteError('ROLE_SWITCH_BUSY', 'a promote or demote is already running');
          switching = true;
          try {
            const started = Date.now();
            const info = before ? await before() : undefined;
            const next = withRole({ ...config, iscsi: { host: config.iscsi.host, port: app.iscsiPort || config.iscsi.port } }, o);
            await writeRoleOverride(config.dataDir, { ...o, changedAt: new Date().toISOString() });
            await app.stop();
            app = await Appliance.start(next, logger, hooks);
            metrics.attach(app);
            config = next;
            const ms = Date.now() - started;
            const what = { promote: 'promoted: this site is now the primary', demote: 'demoted: this site is now a replica', 'replicate-to': 'replication target changed' }[o.reason];
            logger.warn({ role: o.role, ms, replicateTo: o.replicateTo, ...(info as object) }, what);
            return { role: o.role, ms, ...(info as object) };
          } finally {
            switching = false;
          }
        };
        // The replication actions exist only while the site is a primary that replicates (asked at
        // each call: a role switch replaces the appliance).
        const replicating = <K extends keyof ReplicationAdmin>(action: K, why: string): NonNullable<ReplicationAdmin[K]> => {
          const fn = app.admin()[action];
          if (!fn) throw new OffsiteError('NOT_REPLICATING', why);
          return fn as NonNullable<ReplicationAdmin[K]>;
        };
        admin = {
          setBandwidth: (bps: number | 'configured') => replicating('setBandwidth', 'bandwidth applies to a primary that replicates (--replicate-to)')(bps),
          promote: (req: { force?: boolean; replicateTo?: string; reason?: string } & PointRequest) => {
            if (app.role !== 'replica') throw new OffsiteError('NOT_REPLICA', 'this site is already a primary');
            return switchRole({ role: 'primary', replicateTo: req.replicateTo, reason: 'promote' }, () => app.prepareForPromotion(!!req.force, req.reason !== undefined, req));
          },
          testFailover: (action: 'start' | 'stop', at?: PointRequest) => app.testFailover(action, at),
          addBookmark: (name: string) => app.addBookmark(name),
          verify: (req: VerifyRequest) => replicating('verify', 'verify compares a primary that replicates (--replicate-to) with its replica: run it on the primary')(req),
          resize: (req: { volume: string; sizeBytes: number }) => app.resizeVolume(req.volume, req.sizeBytes),
          addVolume: (req: { name: string; sizeBytes: number }) => app.addVolume(req.name, req.sizeBytes),
          removeVolume: (req: { name: string; force: boolean }) => app.removeVolume(req.name, req.force),
          setRpo: (req: Partial<RpoSetting> | 'configured') => replicating('setRpo', 'the RPO target applies to a primary that replicates (--replicate-to)')(req),
          pause: (req: { reason?: string }) => replicating('pause', 'pause applies to a primary that replicates (--replicate-to)')(req),
          resume: () => replicating('resume', 'resume applies to a primary that replicates (--replicate-to)')(),
          replicateTo: (req: { replicateTo?: string }) => {
            if (app.role !== 'primary') throw new OffsiteError('NOT_PRIMARY', 'only a primary replicates; this site is a replica');
            // Restarts the primary side on the same addresses with the new (or no) replica.
            return switchRole({ role: 'primary', replicateTo: req.replicateTo || undefined, reason: 'replicate-to' });
          },
          demote: (req: { replicationListen?: string }) => {
            if (app.role !== 'primary') throw new OffsiteError('NOT_PRIMARY', 'this site is already a replica');
            if (!req.replicationListen) throw new OffsiteError('USAGE', 'demote needs replicationListen: the address where the new primary will connect');
            return switchRole({ role: 'replica', replicationListen: req.replicationListen, reason: 'demote' });
          },
        };
        httpServer = await startHttp(config.http.host, config.http.port, { status: () => app.status(), history: (ms) => app.history(ms), bookmarks: () => app.listBookmarks(), metrics: metrics.registry, admin, adminToken: config.adminToken, tls: config.httpTls }, logger);
        if (config.metricsListen) {
          monitorServer = await startHttp(config.metricsListen.host, config.metricsListen.port, { status: () => app.status(), history: (ms) => app.history(ms), bookmarks: () => app.listBookmarks(), metrics: metrics.registry, readOnly: true, tls: config.httpTls }, logger);
        }
      } catch (e) {
        await httpServer?.close();
        await app.stop();
        fail(e, 'offsite serve: http');
      }
      const status = app.status();
      logger.info({ http: formatHostPort({ host: config.http.host, port: httpServer.address.port }), httpTls: !!config.httpTls, metricsListen: monitorServer ? formatHostPort({ host: config.metricsListen!.host, port: monitorServer.address.port }) : undefined, volumes: status.volumes.map((v) => v.targetName) }, 'ready');
      let stopping = false;
      const shutdown = (signal: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ signal }, 'shutting down');
        const hard = setTimeout(() => {
          logger.error({ step: app.stopStep || 'http' }, 'shutdown took too long; exiting');
          process.exit(1);
        }, 20_000);
        hard.unref();
        void (async () => {
          await httpServer.close();
          await monitorServer?.close();
          await app.stop();
          logger.flush?.();
          setImmediate(() => process.exit(0));
        })();
      };
      process.on('SIGTERM', () => shutdown('SIGTERM'));
      process.on('SIGINT', () => shutdown('SIGINT'));
    });
}
