/**
 * Site configuration: one validated object built from a YAML file (`--config`), then
 * command-line flags, then OFFSITE_* environment variables (each overriding the previous).
 * Every error names the field and says why.
 */
import { readFileSync, statSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import YAML from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../common/errors';
import { parseDuration, parseHostPort, parseRate, parseSize, type HostPort } from '../common/units';
import { isRpoPolicy, RPO_POLICIES, type RpoPolicy } from '../replication/rpo';

export const DEFAULT_TARGET_PREFIX = 'iqn.2026-11.dev.offsite';
export const DEFAULT_ISCSI: HostPort = { host: '0.0.0.0', port: 3260 };
export const DEFAULT_HTTP: HostPort = { host: '127.0.0.1', port: 9464 };
/** Seven witnesses ride out three failures; more would only add requests to every renewal. */
export const MAX_WITNESSES = 7;

export interface ChapSecret {
  user: string;
  secret: string;
}

export interface TargetAuthConfig {
  chap?: ChapSecret;
  mutualChap?: ChapSecret;
  allowedInitiators?: string[];
}

export interface HttpTlsConfig {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
}

export interface VolumeConfig {
  name: string;
  sizeBytes?: number;
  readOnly?: boolean;
}

export interface ApplianceConfig {
  role: 'primary' | 'replica';
  dataDir: string;
  volumes: VolumeConfig[];
  iscsi: HostPort;
  http: HostPort;
  /** When set, GET /status, /metrics and /healthz are also served here, read-only (no admin API). */
  metricsListen?: HostPort;
  /** HTTPS for both HTTP listeners (status, metrics, admin): PEM certificate chain and private key. */
  httpTls?: HttpTlsConfig;
  targetPrefix: string;
  /** Auth applied to every target without its own entry in `targets`. */
  auth: TargetAuthConfig;
  /** Per-volume target auth overrides. */
  targets: Record<string, TargetAuthConfig>;
  journal: {
    /** Benchmark-only switch: false serves the image files directly. */
    enabled: boolean;
    maxBytes?: number;
    retainMs?: number;
    retainBytes?: number;
  };
  logLevel: string;
  /** iSCSI liveness: ping an idle initiator after this long (0: never), drop it when a ping goes unanswered this long. */
  nop: { intervalMs: number; timeoutMs: number };
  replication: {
    /** Primary: the replica's replication address. */
    replicateTo?: HostPort;
    /** Replica: where to accept the primary's connection. */
    listen?: HostPort;
    /** Link cap, bytes per second (0: unlimited). */
    maxBandwidthBytesPerSec: number;
    /** Recovery-point target (0: none). */
    rpoTargetMs: number;
    rpoPolicy: RpoPolicy;
    /** TLS 1.3 pre-shared key file (offsite keygen --link-key). */
    linkKeyFile?: string;
    /** Plain-text replication, explicitly asked for. */
    insecureLink: boolean;
    /** Online verify on a schedule (while the site is the primary): every this long (0: only when asked). */
    verifyEveryMs: number;
    /** The scheduled runs' read-rate cap, bytes per second (0: none). */
    verifyRateBytesPerSec: number;
  };
  /** Bearer token for the admin API (promote, demote, bandwidth); none: admin calls are refused. */
  adminToken?: string;
  /** Split-brain protection and automatic takeover through a witness (offsite witness). */
  witness?: {
    /** The witnesses as given (comma-separated). */
    address: string;
    /** Each witness; with several, a majority must agree (see requestQuorumLease). */
    addresses: string[];
    /** Shared key authenticating the lease requests and answers (offsite keygen --witness-key). */
    key?: Buffer;
    /** While this site is the replica: promote itself when the primary has been silent this long (and the witness agrees). */
    failoverAfterMs?: number;
  };
}

// --- the YAML file schema (human units as strings or numbers) -------------------------
const sizeField = z.union([z.number().int().positive(), z.string()]);
const durationField = z.union([z.number().nonnegative(), z.string()]);
const chapSchema = z.object({ user: z.string().min(1), secret: z.string().min(12, 'CHAP secrets must be 12 to 16+ characters (RFC 7143 §12.1.3 recommends at least 96 bits)') }).strict();
const authSchema = z
  .object({ chap: chapSchema.optional(), mutualChap: chapSchema.optional(), allowedInitiators: z.array(z.string().min(1)).optional() })
  .strict();
const fileSchema = z
  .object({
    role: z.enum(['primary', 'replica']).optional(),
    data: z.string().min(1).optional(),
    volumes: z.array(z.union([z.string(), z.object({ name: z.string(), size: sizeField.optional(), readOnly: z.boolean().optional() }).strict()])).optional(),
    iscsi: z.string().optional(),
    http: z.string().optional(),
    metricsListen: z.string().optional(),
    httpTls: z.object({ cert: z.string().min(1), key: z.string().min(1) }).strict().optional(),
    targetPrefix: z.string().optional(),
    auth: authSchema.optional(),
    targets: z.record(z.string(), authSchema).optional(),
    journal: z
      .object({ enabled: z.boolean().optional(), max: sizeField.optional(), retain: durationField.optional(), retainSize: sizeField.optional() })
      .strict()
      .optional(),
    logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).optional(),
    admin: z.object({ tokenFile: z.string().min(1).optional() }).strict().optional(),
    witness: z.object({ address: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]), failoverAfter: durationField.optional(), keyFile: z.string().min(1).optional() }).strict().optional(),
    nop: z.object({ interval: durationField.optional(), timeout: durationField.optional() }).strict().optional(),
    replication: z
      .object({
        replicateTo: z.string().optional(),
        listen: z.string().optional(),
        maxBandwidth: z.union([z.number().nonnegative(), z.string()]).optional(),
        rpoTarget: durationField.optional(),
        rpoPolicy: z.enum(RPO_POLICIES).optional(),
        linkKey: z.string().min(1).optional(),
        insecureLink: z.boolean().optional(),
        verifyEvery: durationField.optional(),
        verifyRate: z.union([z.number().nonnegative(), z.string()]).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export type ConfigFile = z.infer<typeof fileSchema>;

/** Command-line flags as the CLI parsed them (strings; undefined when not given). */
export interface ConfigFlags {
  role?: string;
  data?: string;
  volume?: string[];
  iscsi?: string;
  http?: string;
  metricsListen?: string;
  httpTlsCert?: string;
  httpTlsKey?: string;
  targetPrefix?: string;
  journal?: boolean;
  journalMax?: string;
  journalRetain?: string;
  logLevel?: string;
  nopInterval?: string;
  nopTimeout?: string;
  replicateTo?: string;
  replicationListen?: string;
  maxBandwidth?: string;
  rpoTarget?: string;
  rpoPolicy?: string;
  linkKey?: string;
  insecureLink?: boolean;
  verifyEvery?: string;
  verifyRate?: string;
  adminTokenFile?: string;
  witness?: string;
  witnessKey?: string;
  failoverAfter?: string;
}

export function loadConfigFile(path: string): ConfigFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`config: cannot read ${path}: ${(e as Error).message}`, 'config');
  }
  let raw: unknown;
  try {
    raw = YAML.parse(text);
  } catch (e) {
    throw new ConfigError(`config: ${path} is not valid YAML: ${(e as Error).message}`, 'config');
  }
  const parsed = fileSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue.path.join('.') || '(top level)';
    throw new ConfigError(`config: ${path}: field '${field}': ${issue.message}`, field);
  }
  return parsed.data;
}

/** "NAME:SIZE" or "NAME" (an existing volume). */
export function parseVolumeSpec(spec: string, field = 'volume'): VolumeConfig {
  const i = spec.indexOf(':');
  if (i < 0) return { name: spec };
  const name = spec.slice(0, i);
  return { name, sizeBytes: parseSize(spec.slice(i + 1), `${field} ${name}`) };
}

function chapFromEnv(env: NodeJS.ProcessEnv, prefix: string): ChapSecret | undefined {
  const user = env[`${prefix}_USER`];
  const secret = env[`${prefix}_SECRET`];
  if (user === undefined && secret === undefined) return undefined;
  if (!user || !secret) throw new ConfigError(`${prefix}_USER and ${prefix}_SECRET must be set together`, prefix);
  return { user, secret };
}

/** Refuse a secret file that group or others can read. */
function checkOwnerOnly(file: string, what: string, field: string): void {
  const mode = statSync(file).mode;
  if (mode & 0o077) throw new ConfigError(`${what}: ${file} is readable by others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`, field);
}

/** A shared secret from a file: owner-only, at least 32 characters (offsite keygen makes them). */
export function readSecretFile(file: string, what: string, field: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new ConfigError(`${what}: cannot read ${file}: ${(e as Error).message}`, field);
  }
  checkOwnerOnly(file, what, field);
  if (text.length < 32) throw new ConfigError(`${what}: ${file} holds ${text.length} characters; use at least 32 (offsite keygen makes one)`, field);
  return Buffer.from(text, 'utf8');
}

/**
 * Read and check the HTTPS certificate and key: both given or neither, readable, the key not
 * readable by others, and the two a pair (TLS would otherwise fail only at the first client).
 * Each comes with the name it was given by (config field, flag or variable) for the errors.
 */
export function loadHttpTls(certGiven: { value: string; from: string } | undefined, keyGiven: { value: string; from: string } | undefined): HttpTlsConfig | undefined {
  if (!certGiven && !keyGiven) return undefined;
  if (!certGiven || !keyGiven) {
    throw new ConfigError(`http-tls: give both --http-tls-cert FILE and --http-tls-key FILE (only the ${certGiven ? 'certificate' : 'key'} was given, by ${(certGiven ?? keyGiven)!.from})`, certGiven ? 'httpTls.key' : 'httpTls.cert');
  }
  const read = (g: { value: string; from: string }, field: string): Buffer => {
    try {
      return readFileSync(g.value);
    } catch (e) {
      throw new ConfigError(`${g.from}: cannot read ${g.value}: ${(e as Error).message}`, field);
    }
  };
  const certFile = certGiven.value;
  const keyFile = keyGiven.value;
  const cert = read(certGiven, 'httpTls.cert');
  const key = read(keyGiven, 'httpTls.key');
  checkOwnerOnly(keyFile, keyGiven.from, 'httpTls.key');
  try {
    createSecureContext({ cert, key });
  } catch (e) {
    const why = (e as Error).message;
    const hint = /mismatch/i.test(why) ? 'the key does not belong to the certificate' : /PEM|no start line|decoder|unsupported/i.test(why) ? 'expected PEM files (a certificate chain and its private key)' : why;
    throw new ConfigError(`http-tls: cannot use ${certFile} with ${keyFile}: ${hint} (${why})`, 'httpTls');
  }
  return { certFile, keyFile, cert, key };
}

/**
 * One setting as given, and by what name: the file's field path (`journal.max`), the flag
 * (`--journal-max`) or the variable (`OFFSITE_JOURNAL_MAX`), whichever was given last in the
 * order file < flag < environment. Errors about its value use that name, so the operator is sent
 * to where the bad value was written.
 */
interface Given<T> {
  value: T;
  from: string;
}

/** The three sources of one setting; an empty string counts as not given. */
function settingOf<F, L>(env: NodeJS.ProcessEnv, fileField: string, fileValue: F | undefined, flag: string, flagValue: L | undefined, envName?: string): Given<F | L | string> | undefined {
  let out: Given<F | L | string> | undefined;
  if (fileValue !== undefined && (fileValue as unknown) !== '') out = { value: fileValue, from: fileField };
  if (flagValue !== undefined && (flagValue as unknown) !== '') out = { value: flagValue, from: flag };
  const e = envName === undefined ? undefined : env[envName];
  if (e !== undefined && e !== '') out = { value: e, from: envName! };
  return out;
}

/** A yes/no environment variable: 1/true/yes or 0/false/no; anything else is an error naming it. */
function envSwitch(env: NodeJS.ProcessEnv, name: string, field: string): boolean | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  if (/^(1|true|yes)$/i.test(v)) return true;
  if (/^(0|false|no)$/i.test(v)) return false;
  throw new ConfigError(`${name}: '${v}' must be 1, true or yes (or 0, false, no)`, field);
}

/** Build the effective configuration: file < flags < environment. */
export function resolveConfig(file: ConfigFile, flags: ConfigFlags, env: NodeJS.ProcessEnv = process.env): ApplianceConfig {
  const setting = <F, L>(fileField: string, fileValue: F | undefined, flag: string, flagValue: L | undefined, envName?: string) => settingOf(env, fileField, fileValue, flag, flagValue, envName);
  // Human units: a number in the file is bytes (sizes, rates) or seconds (durations).
  const size = (g: Given<string | number> | undefined) => (g === undefined ? undefined : typeof g.value === 'number' ? g.value : parseSize(g.value, g.from));
  const rate = (g: Given<string | number> | undefined) => (g === undefined ? undefined : typeof g.value === 'number' ? g.value : parseRate(g.value, g.from));
  const ms = (g: Given<string | number> | undefined) => (g === undefined ? undefined : typeof g.value === 'number' ? g.value * 1000 : parseDuration(g.value, g.from));
  const address = (g: Given<string> | undefined) => (g === undefined ? undefined : parseHostPort(g.value, g.from));

  const roleGiven = setting('role', file.role, '--role', flags.role, 'OFFSITE_ROLE');
  const role = roleGiven?.value ?? 'primary';
  if (role !== 'primary' && role !== 'replica') throw new ConfigError(`${roleGiven!.from}: '${role}' must be primary or replica`, 'role');
  const dataDir = setting('data', file.data, '--data', flags.data, 'OFFSITE_DATA')?.value;
  if (!dataDir) throw new ConfigError('data: a data directory is required (--data DIR)', 'data');

  let volumes: VolumeConfig[] = (file.volumes ?? []).map((v) =>
    typeof v === 'string' ? parseVolumeSpec(v, 'volumes') : { name: v.name, sizeBytes: v.size === undefined ? undefined : typeof v.size === 'number' ? v.size : parseSize(v.size, `volumes.${v.name}.size`), readOnly: v.readOnly },
  );
  if (flags.volume && flags.volume.length) volumes = flags.volume.map((s) => parseVolumeSpec(s, '--volume'));
  if (env.OFFSITE_VOLUMES) volumes = env.OFFSITE_VOLUMES.split(',').filter(Boolean).map((s) => parseVolumeSpec(s.trim(), 'OFFSITE_VOLUMES'));
  const seen = new Set<string>();
  for (const v of volumes) {
    if (seen.has(v.name)) throw new ConfigError(`volume: '${v.name}' is given twice`, 'volume');
    seen.add(v.name);
  }

  const iscsi = address(setting('iscsi', file.iscsi, '--iscsi', flags.iscsi, 'OFFSITE_ISCSI'));
  const http = address(setting('http', file.http, '--http', flags.http, 'OFFSITE_HTTP'));
  const metricsListen = address(setting('metricsListen', file.metricsListen, '--metrics-listen', flags.metricsListen, 'OFFSITE_METRICS_LISTEN'));
  const httpTls = loadHttpTls(setting('httpTls.cert', file.httpTls?.cert, '--http-tls-cert', flags.httpTlsCert, 'OFFSITE_HTTP_TLS_CERT'), setting('httpTls.key', file.httpTls?.key, '--http-tls-key', flags.httpTlsKey, 'OFFSITE_HTTP_TLS_KEY'));
  const prefixGiven = setting('targetPrefix', file.targetPrefix, '--target-prefix', flags.targetPrefix, 'OFFSITE_TARGET_PREFIX');
  const targetPrefix = prefixGiven?.value ?? DEFAULT_TARGET_PREFIX;
  if (!/^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[^\s]*)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$/.test(targetPrefix)) {
    throw new ConfigError(`${prefixGiven?.from ?? 'targetPrefix'}: '${targetPrefix}' is not an iSCSI name (example: iqn.2026-11.dev.offsite)`, 'targetPrefix');
  }

  const auth: TargetAuthConfig = { ...(file.auth ?? {}) };
  const envChap = chapFromEnv(env, 'OFFSITE_CHAP');
  if (envChap) auth.chap = envChap;
  const envMutual = chapFromEnv(env, 'OFFSITE_MUTUAL_CHAP');
  if (envMutual) auth.mutualChap = envMutual;
  const targets = file.targets ?? {};
  for (const [name, a] of [['(all targets)', auth] as const, ...Object.entries(targets)]) {
    if (a.mutualChap && !a.chap) throw new ConfigError(`auth for ${name}: mutualChap needs chap as well`, 'auth.mutualChap');
    if (a.chap && a.mutualChap && a.chap.secret === a.mutualChap.secret) {
      throw new ConfigError(`auth for ${name}: the mutual CHAP secret must differ from the initiator's (RFC 7143 §12.1.3)`, 'auth.mutualChap');
    }
  }

  // commander sets journal=true unless --no-journal: only `false` is a decision of the flags.
  const journalEnabled = flags.journal === false ? false : file.journal?.enabled ?? true;
  const journalMaxBytes = size(setting('journal.max', file.journal?.max, '--journal-max', flags.journalMax, 'OFFSITE_JOURNAL_MAX'));
  const journalRetainMs = ms(setting('journal.retain', file.journal?.retain, '--journal-retain', flags.journalRetain, 'OFFSITE_JOURNAL_RETAIN'));
  const journalRetainBytes = size(setting<string | number, string>('journal.retainSize', file.journal?.retainSize, '', undefined));
  const logGiven = setting('logLevel', file.logLevel, '--log-level', flags.logLevel, 'OFFSITE_LOG_LEVEL');
  const logLevel = logGiven?.value ?? 'info';
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(logLevel)) {
    throw new ConfigError(`${logGiven!.from}: '${logLevel}' is not one of trace, debug, info, warn, error, fatal, silent`, 'logLevel');
  }

  const nopTimeout = setting('nop.timeout', file.nop?.timeout, '--nop-timeout', flags.nopTimeout, 'OFFSITE_NOP_TIMEOUT');
  const nop = { intervalMs: ms(setting('nop.interval', file.nop?.interval, '--nop-interval', flags.nopInterval, 'OFFSITE_NOP_INTERVAL')) ?? 5000, timeoutMs: ms(nopTimeout) ?? 30000 };
  if (nop.intervalMs && nop.timeoutMs < 100) throw new ConfigError(`${nopTimeout?.from ?? 'nop.timeout'}: must be at least 100ms`, 'nop.timeout');

  const rf = file.replication ?? {};
  const replicateToGiven = setting('replication.replicateTo', rf.replicateTo, '--replicate-to', flags.replicateTo, 'OFFSITE_REPLICATE_TO');
  const listenGiven = setting('replication.listen', rf.listen, '--replication-listen', flags.replicationListen, 'OFFSITE_REPLICATION_LISTEN');
  const replicateTo = replicateToGiven?.value;
  const listen = listenGiven?.value;
  const policyGiven = setting('replication.rpoPolicy', rf.rpoPolicy, '--rpo-policy', flags.rpoPolicy, 'OFFSITE_RPO_POLICY');
  const rpoPolicy = policyGiven?.value ?? 'coalesce';
  if (!isRpoPolicy(rpoPolicy)) throw new ConfigError(`${policyGiven!.from}: '${rpoPolicy}' must be coalesce, throttle or alert`, 'replication.rpoPolicy');
  if (role === 'replica' && replicateToGiven) throw new ConfigError(`${replicateToGiven.from}: a replica does not replicate (it receives on --replication-listen)`, 'replication.replicateTo');
  if (role === 'primary' && listenGiven) throw new ConfigError(`${listenGiven.from}: only a replica listens for replication (use --role replica)`, 'replication.listen');
  if (role === 'replica' && !listen) throw new ConfigError('replication-listen: a replica needs --replication-listen HOST:PORT', 'replication.listen');
  if (role === 'replica' && volumes.some((v) => v.sizeBytes !== undefined)) throw new ConfigError('volume: a replica learns its volumes from the primary; do not give --volume NAME:SIZE', 'volume');
  if (replicateToGiven && !journalEnabled) throw new ConfigError(`${replicateToGiven.from}: replication needs the journal (remove --no-journal)`, 'replication.replicateTo');
  const linkKeyGiven = setting('replication.linkKey', rf.linkKey, '--link-key', flags.linkKey, 'OFFSITE_LINK_KEY');
  const linkKeyFile = linkKeyGiven?.value;
  // A switch like every other setting: the environment (either way) over the flag over the file.
  const insecureGiven = setting('replication.insecureLink', rf.insecureLink, '--insecure-link', flags.insecureLink);
  const insecureEnv = envSwitch(env, 'OFFSITE_INSECURE_LINK', 'replication.insecureLink');
  const insecure = insecureEnv !== undefined ? { value: insecureEnv, from: 'OFFSITE_INSECURE_LINK' } : insecureGiven;
  const insecureLink = insecure?.value === true;
  if ((replicateTo || listen) && !linkKeyFile && !insecureLink) {
    throw new ConfigError('link-key: the replication link is authenticated and encrypted: give --link-key FILE (make it with offsite keygen --link-key FILE, same file at both sites) or, knowingly, --insecure-link', 'replication.linkKey');
  }
  if (linkKeyGiven && insecureLink) throw new ConfigError(`${insecure!.from}: insecure link and ${linkKeyGiven.from} exclude each other`, 'replication.insecureLink');
  const verifyEvery = setting('replication.verifyEvery', rf.verifyEvery, '--verify-every', flags.verifyEvery, 'OFFSITE_VERIFY_EVERY');
  const verifyEveryMs = ms(verifyEvery) ?? 0;
  if (verifyEveryMs !== 0 && verifyEveryMs < 1000) throw new ConfigError(`${verifyEvery!.from}: at least 1s (0 turns the schedule off)`, 'replication.verifyEvery');
  if (verifyEveryMs && !replicateTo && !listen) throw new ConfigError(`${verifyEvery!.from}: online verify compares with a replica: give --replicate-to (or, on a replica, --replication-listen, for when it is promoted)`, 'replication.verifyEvery');
  const verifyRateBytesPerSec = rate(setting('replication.verifyRate', rf.verifyRate, '--verify-rate', flags.verifyRate, 'OFFSITE_VERIFY_RATE')) ?? 0;
  const tokenFile = setting('admin.tokenFile', file.admin?.tokenFile, '--admin-token-file', flags.adminTokenFile);
  let adminToken = env.OFFSITE_ADMIN_TOKEN || undefined;
  if (!adminToken && tokenFile) {
    try {
      adminToken = readFileSync(tokenFile.value, 'utf8').trim();
    } catch (e) {
      throw new ConfigError(`${tokenFile.from}: cannot read ${tokenFile.value}: ${(e as Error).message}`, 'admin.tokenFile');
    }
  }
  const witnessGiven = setting<string | string[], string>('witness.address', file.witness?.address, '--witness', flags.witness, 'OFFSITE_WITNESS');
  const witnessFrom = witnessGiven?.from ?? 'witness.address';
  const witnessAddresses = witnessGiven === undefined ? [] : (Array.isArray(witnessGiven.value) ? witnessGiven.value : witnessGiven.value.split(',')).map((w) => w.trim());
  const witnessAddr = witnessGiven === undefined ? undefined : witnessAddresses.join(',');
  const failover = setting('witness.failoverAfter', file.witness?.failoverAfter, '--failover-after', flags.failoverAfter, 'OFFSITE_FAILOVER_AFTER');
  for (const w of witnessAddresses) parseHostPort(w, witnessFrom);
  if (new Set(witnessAddresses).size !== witnessAddresses.length) throw new ConfigError(`${witnessFrom}: ${witnessAddr} names a witness twice (a majority of distinct witnesses must agree)`, 'witness.address');
  if (witnessAddresses.length > MAX_WITNESSES) throw new ConfigError(`${witnessFrom}: at most ${MAX_WITNESSES} witnesses (${witnessAddresses.length} given)`, 'witness.address');
  const witnessKeyGiven = setting('witness.keyFile', file.witness?.keyFile, '--witness-key', flags.witnessKey, 'OFFSITE_WITNESS_KEY');
  if (witnessKeyGiven && !witnessAddr) throw new ConfigError(`${witnessKeyGiven.from}: give the witness too (--witness HOST:PORT)`, 'witness.keyFile');
  const witnessKey = witnessKeyGiven ? readSecretFile(witnessKeyGiven.value, witnessKeyGiven.from, 'witness.keyFile') : undefined;
  if (failover && !witnessAddr) throw new ConfigError(`${failover.from}: automatic takeover needs a witness (--witness HOST:PORT)`, 'witness.failoverAfter');
  if (adminToken !== undefined && adminToken.length < 16) throw new ConfigError('admin token: use at least 16 characters (offsite keygen --admin-token FILE makes one)', 'admin.tokenFile');

  return {
    role,
    dataDir,
    volumes,
    iscsi: iscsi ?? DEFAULT_ISCSI,
    http: http ?? DEFAULT_HTTP,
    metricsListen,
    httpTls,
    targetPrefix,
    auth,
    targets,
    journal: {
      enabled: journalEnabled,
      maxBytes: journalMaxBytes,
      retainMs: journalRetainMs,
      retainBytes: journalRetainBytes,
    },
    logLevel,
    nop,
    replication: {
      replicateTo: address(replicateToGiven),
      listen: address(listenGiven),
      maxBandwidthBytesPerSec: rate(setting('replication.maxBandwidth', rf.maxBandwidth, '--max-bandwidth', flags.maxBandwidth, 'OFFSITE_MAX_BANDWIDTH')) ?? 0,
      rpoTargetMs: ms(setting('replication.rpoTarget', rf.rpoTarget, '--rpo-target', flags.rpoTarget, 'OFFSITE_RPO_TARGET')) ?? 0,
      rpoPolicy,
      linkKeyFile,
      insecureLink,
      verifyEveryMs,
      verifyRateBytesPerSec,
    },
    adminToken,
    witness: witnessAddr ? { address: witnessAddr, addresses: witnessAddresses, key: witnessKey, failoverAfterMs: ms(failover) } : undefined,
  };
}

export function targetName(prefix: string, volume: string): string {
  return `${prefix}:${volume}`;
}
