/**
 * The witness: a small third process that decides which site may accept writes. It holds one
 * lease (site, expiry). The primary renews it; a replica may take it only once it has expired,
 * i.e. once the primary has stopped renewing for a whole lease period. A primary fences itself
 * (stops acknowledging writes) well before its lease runs out when it can reach neither the
 * witness nor its replica, so the two never accept writes at the same time.
 *
 *   POST /lease {siteId, role, timeMs, epoch?, renewing?} → 200 {granted: true, expiresAt, leaseMs, epoch}
 *                                               | 409 {granted: false, holder, expiresInMs, leaseMs, superseded?}
 *   GET  /status                        → the current holder, the incarnation, the state file (null: none)
 *   GET  /metrics                       → Prometheus metrics (when the ops layer supplies them)
 *
 * Every change of holder starts a new epoch (`<incarnation>:<n>`, the incarnation drawn at the
 * witness's start). A grant names the epoch; a site renewing a lease it held sends that epoch,
 * and is refused (`superseded`) once the lease has passed to another site since, even after that
 * site's lease ran out: an old primary that was cut off while a replica took over (and whose own
 * promotion may be slow to renew) never gets the lease back by asking again. A site renewing
 * through several witnesses says so (`renewing`) also to a witness that gave it no epoch, which
 * then refuses it too if another site has held the lease there. Only a claim (a replica taking
 * over, a site just promoted, a new site) may take an expired lease.
 *
 * A witness that (re)starts knows no holder, while the last one's lease may still run: for one
 * lease after its start it grants nothing (503 WITNESS_STARTING, which the sites treat like an
 * unreachable witness), so a replica cannot take a lease a live primary still holds.
 *
 * With a shared key (offsite keygen --witness-key, the same file at the witness and both sites)
 * both directions are authenticated: a request carries `x-offsite-mac`, an HMAC-SHA256 of its
 * body, whose `timeMs` must be within WITNESS_SKEW_MS of the witness's clock and later than the
 * site's previous request (no replays); the answer carries an HMAC of the request's MAC and the
 * answer's body, so a site trusts no answer the witness did not give to that very request.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, open, unlink } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { grantorNow } from '../common/clock';
import { OffsiteError } from '../common/errors';
import { readJsonFile, writeJsonFile } from '../common/json-file';
import { logGate, type Logger } from '../common/logger';
import { pidFileOwner, removeOwnPidFile } from '../common/process';

export interface WitnessOptions {
  leaseMs: number;
  logger: Logger;
  /** The clock leases run on (default grantorNow: monotonic, so a stepped or suspended clock only ever lengthens a lease). */
  now?: () => number;
  /** Shared key: requests must be signed with it, answers are. Undefined: anyone may ask. */
  key?: Buffer;
  /** No grants for this long after the start (default: one lease). */
  quietMs?: number;
  /** GET /metrics answers with this (the ops layer's Prometheus exposition); absent: 404. */
  metrics?: () => Promise<{ contentType: string; body: string }>;
  /**
   * Keep the lease book's state in this file (WitnessState), written durably at every change of
   * holder before that change is answered, and read back at start. Absent: memory only.
   */
  stateFile?: string;
  /** With a state file: rewrite it this often (default 30 s), so that a file that can no longer be written shows (stateWritable) before a takeover needs it. */
  stateCheckMs?: number;
}

/** A state file that cannot be used (unreadable, not a witness's, or from a newer version), or one another witness uses. */
export class WitnessStateError extends OffsiteError {
  constructor(message: string, options?: { cause?: unknown; code?: 'WITNESS_STATE_INVALID' | 'WITNESS_STATE_LOCKED' }) {
    super(options?.code ?? 'WITNESS_STATE_INVALID', message, options);
  }
}

/**
 * Take `<file>.pid` for this process: two witnesses keeping one state file would each overwrite
 * what the other decided. Refused while the pid it names is alive (not this process); a pid file
 * a stopped or killed witness left is taken over. Returns the release (removes it if still ours).
 */
export async function lockWitnessState(file: string): Promise<() => Promise<void>> {
  const pidFile = `${file}.pid`;
  await mkdir(path.dirname(pidFile), { recursive: true, mode: 0o700 });
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(pidFile, 'wx', 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw e;
      const pid = await pidFileOwner(pidFile);
      if (pid !== undefined) {
        throw new WitnessStateError(`witness state ${file} is in use by another witness (pid ${pid}): give each witness its own --state file`, { code: 'WITNESS_STATE_LOCKED' });
      }
      await unlink(pidFile).catch(() => undefined); // left by a witness that is gone
    }
  }
  return () => removeOwnPidFile(pidFile);
}

/**
 * A witness's --state file while it runs: locked to this process, read back at start, then
 * written at every change of holder (before the change is answered) and every `checkMs`.
 */
class WitnessStateFile {
  /** Whether the last write succeeded. */
  writable = true;
  /** Changes of holder the file holds (-1: nothing written yet). */
  private saved = -1;
  private writing: Promise<void> = Promise.resolve();
  private checker?: NodeJS.Timeout;

  private constructor(
    readonly file: string,
    readonly restored: WitnessState | undefined,
    private readonly logger: Logger,
    private readonly release: () => Promise<void>,
  ) {}

  static async open(file: string, logger: Logger): Promise<WitnessStateFile> {
    const release = await lockWitnessState(file);
    try {
      return new WitnessStateFile(file, await readWitnessState(file), logger, release);
    } catch (e) {
      await release();
      throw e;
    }
  }

  /** Write `book` now (a fresh file: its incarnation), then keep it: every `checkMs` the file is written again to find out whether it still can be. */
  async keep(book: LeaseBook, checkMs: number): Promise<void> {
    const h = this.restored?.holder;
    this.logger.info({ stateFile: this.file, incarnation: book.incarnation, holder: h?.siteId, epoch: h?.epoch }, this.restored ? 'witness: state restored (the lease holders before this start are remembered)' : 'witness: no state file yet; starting one');
    if (this.restored) this.saved = book.changes;
    await this.persist(book);
    this.checker = setInterval(() => void this.persist(book, true).catch(() => undefined), checkMs).unref();
  }

  /**
   * Resolves once the file holds every change of holder made so far (it failed: rejects, and the
   * next call writes again). `check`: write even when nothing changed.
   */
  persist(book: LeaseBook, check = false): Promise<void> {
    this.writing = this.writing.catch(() => undefined).then(async () => {
      const changes = book.changes;
      if (changes === this.saved && !check) return;
      try {
        await writeJsonFile(this.file, book.state());
      } catch (e) {
        if (this.writable) this.logger.error({ err: e, stateFile: this.file }, 'witness: the state file cannot be written: no lease can change hands until it can');
        this.writable = false;
        throw e;
      }
      if (!this.writable) this.logger.info({ stateFile: this.file }, 'witness: the state file can be written again');
      this.writable = true;
      this.saved = changes;
    });
    return this.writing;
  }

  async close(): Promise<void> {
    clearInterval(this.checker);
    await this.writing.catch(() => undefined);
    await this.release();
  }
}

/** The state file's content checked field by field; undefined when there is no file yet. */
export async function readWitnessState(file: string): Promise<WitnessState | undefined> {
  let v: unknown;
  try {
    v = await readJsonFile(file);
  } catch (e) {
    throw new WitnessStateError(`witness state ${file} cannot be read: ${(e as Error).message} (move it aside to start with no memory of earlier holders)`, { cause: e });
  }
  if (v === undefined) return undefined;
  const bad = (why: string) => new WitnessStateError(`witness state ${file} is not usable: ${why} (move it aside to start with no memory of earlier holders)`);
  const o = v as Partial<Record<keyof WitnessState, unknown>>;
  if (typeof v !== 'object' || v === null) throw bad('not a JSON object');
  if (o.version !== 1) throw bad(`version ${JSON.stringify(o.version)}, this witness reads version 1`);
  if (typeof o.incarnation !== 'string' || !/^[0-9a-zA-Z]+$/.test(o.incarnation)) throw bad('no incarnation');
  if (!Number.isSafeInteger(o.holders) || (o.holders as number) < 0) throw bad('no count of holders');
  const h = o.holder as Partial<Record<string, unknown>> | null | undefined;
  if (h !== null) {
    if (typeof h !== 'object' || h === undefined) throw bad('no holder (null for none)');
    if (typeof h.siteId !== 'string' || !h.siteId || typeof h.role !== 'string' || typeof h.epoch !== 'string' || !h.epoch.startsWith(`${o.incarnation}:`) || typeof h.grantedAt !== 'number') throw bad('a holder without a site, role, epoch of this incarnation or grant time');
  }
  return { version: 1, incarnation: o.incarnation, holders: o.holders as number, holder: h === null ? null : { siteId: h.siteId as string, role: h.role as string, epoch: h.epoch as string, grantedAt: h.grantedAt as number } };
}

/** What a witness has answered since it started, by kind (for its metrics). */
export interface WitnessStats {
  grants: number;
  takeovers: number;
  /** Refused requests, by why: held (another site's lease runs), superseded (the lease moved on since this site held it), starting, unauthorized, clock, replay, bad_request, state (the state file could not be written). */
  refused: Record<'held' | 'superseded' | 'starting' | 'unauthorized' | 'clock' | 'replay' | 'bad_request' | 'state', number>;
}

export interface RunningWitness {
  address: AddressInfo;
  book: LeaseBook;
  leaseMs: number;
  authenticated: boolean;
  stats(): WitnessStats;
  /** The lease clock (grantorNow unless a test gave another). */
  now(): number;
  /** With --state: whether the last write of the state file succeeded (undefined without one). */
  stateWritable(): boolean | undefined;
  close(): Promise<void>;
}

/** How far a signed request's time may be from the witness's clock. */
export const WITNESS_SKEW_MS = 30_000;
export const MAC_HEADER = 'x-offsite-mac';

/** HMAC-SHA256 (hex) of the parts, domain-separated by what they are. */
export function witnessMac(key: Buffer, kind: 'request' | 'answer', ...parts: string[]): string {
  return createHmac('sha256', key).update(`offsite-witness-${kind}\n${parts.join('\n')}`).digest('hex');
}

function sameMac(given: string, want: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

export interface Lease {
  siteId: string;
  role: string;
  expiresAt: number;
  grantedAt: number;
  /** This holder's epoch: `<incarnation>:<n>`, n counting the holders since the witness started. */
  epoch: string;
}

export type LeaseVerdict =
  | { granted: true; lease: Lease; takeover: boolean }
  | { granted: false; holder: Lease; superseded?: boolean }
  | { granted: false; quietForMs: number };

/**
 * What a witness with `--state` keeps on disk: enough to go on deciding as before a restart. The
 * incarnation and the count of holders keep epochs unique and the ones granted before valid; the
 * last holder (no expiry: a restarted witness grants nothing for a lease, by which time whatever
 * lease it had has run out) keeps a site the lease moved on from refused (superseded).
 */
export interface WitnessState {
  version: 1;
  incarnation: string;
  holders: number;
  holder: { siteId: string; role: string; epoch: string; grantedAt: number } | null;
}

/** Pure lease logic (kept apart from HTTP so it can be reasoned about and tested alone). */
export class LeaseBook {
  holder?: Lease;
  private holders = 0;
  /** Counts changes of holder: what a state file must catch up with. */
  changes = 0;

  /**
   * `quietUntil`: no grants before this time (a restarted witness: see the top of this file).
   * `restored`: the state a previous run of this witness left (its incarnation then wins).
   */
  constructor(
    private readonly leaseMs: number,
    private readonly quietUntil = 0,
    readonly incarnation: string = randomBytes(6).toString('hex'),
    restored?: WitnessState,
  ) {
    if (restored) {
      this.incarnation = restored.incarnation;
      this.holders = restored.holders;
      // Its lease ran out by the end of the quiet time at the latest (grantedAt is from the old clock: kept as a label only).
      if (restored.holder) this.holder = { ...restored.holder, expiresAt: quietUntil };
    }
  }

  /** What a state file keeps (see WitnessState). */
  state(): WitnessState {
    const h = this.holder;
    return { version: 1, incarnation: this.incarnation, holders: this.holders, holder: h ? { siteId: h.siteId, role: h.role, epoch: h.epoch, grantedAt: h.grantedAt } : null };
  }

  /**
   * `epoch`: the one this site was granted when it last held the lease here; `renewing`: the
   * site holds (or held) the lease since its last promotion, through this witness or others.
   * Neither: a claim (a replica taking over, a site just promoted, a new one), which may take an
   * expired lease. A renewal is refused (superseded) when another site holds the lease here,
   * even an expired one: another site took over at this witness, after this site's epoch began
   * (or, with no epoch of this witness's, at a time nothing orders against this site's turn).
   */
  request(siteId: string, role: string, now: number, epoch?: string, renewing = false): LeaseVerdict {
    if (now < this.quietUntil) return { granted: false, quietForMs: this.quietUntil - now };
    const h = this.holder;
    if (h && h.siteId !== siteId) {
      if (h.expiresAt > now) return { granted: false, holder: h };
      const ours = epoch !== undefined && epoch.startsWith(`${this.incarnation}:`);
      // A renewal under one of our epochs: the lease has moved on since. A renewal with none of
      // ours (the site holds the lease through other witnesses, or ours is from before a restart):
      // another site held it here, and nothing says that was before this site's turn.
      if (ours || renewing) return { granted: false, holder: h, superseded: true };
    }
    const same = !!h && h.siteId === siteId;
    const takeover = !!h && !same;
    if (!same) this.changes++;
    this.holder = { siteId, role, expiresAt: now + this.leaseMs, grantedAt: same ? h.grantedAt : now, epoch: same ? h.epoch : `${this.incarnation}:${++this.holders}` };
    return { granted: true, lease: this.holder, takeover };
  }
}

export async function startWitness(host: string, port: number, opts: WitnessOptions): Promise<RunningWitness> {
  const now = opts.now ?? grantorNow;
  const stats: WitnessStats = { grants: 0, takeovers: 0, refused: { held: 0, superseded: 0, starting: 0, unauthorized: 0, clock: 0, replay: 0, bad_request: 0, state: 0 } };
  const state = opts.stateFile ? await WitnessStateFile.open(opts.stateFile, opts.logger) : undefined;
  const book = new LeaseBook(opts.leaseMs, now() + (opts.quietMs ?? opts.leaseMs), undefined, state?.restored);
  const persist = (): Promise<void> => state?.persist(book) ?? Promise.resolve();
  const key = opts.key;
  /** The newest signed request time accepted per site: an older or equal one is a replay. */
  const lastTime = new Map<string, number>();
  /**
   * Requests signed before this start are refused too: whatever this witness answered before a
   * restart, its newest request times were lost with it, and a request captured then could be
   * replayed within the clock window. A site whose clock is behind is refused until it passes this.
   */
  const startedWall = Date.now();
  const gate = logGate(1000);
  const refuse = (reply: (code: number, body: unknown) => void, peer: string | undefined, code: string, error: string, kind: 'unauthorized' | 'clock' | 'replay') => {
    stats.refused[kind]++;
    const skipped = gate();
    if (skipped !== undefined) opts.logger.warn({ peer, code, alsoRefused: skipped || undefined }, `witness: request refused: ${error}`);
    reply(401, { error, code });
  };
  const server = http.createServer((req, res) => {
    let requestMac = '';
    const reply = (code: number, body: unknown) => {
      const text = JSON.stringify(body) + '\n';
      const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) };
      if (key && requestMac) headers[MAC_HEADER] = witnessMac(key, 'answer', requestMac, text);
      res.writeHead(code, headers);
      res.end(text);
    };
    const url = new URL(req.url ?? '/', 'http://witness');
    if (req.method === 'GET' && url.pathname === '/metrics' && opts.metrics) {
      void opts.metrics().then(
        (m) => {
          res.writeHead(200, { 'content-type': m.contentType, 'content-length': Buffer.byteLength(m.body) });
          res.end(m.body);
        },
        (e: unknown) => {
          opts.logger.error({ err: e }, 'witness: metrics failed');
          res.writeHead(500).end();
        },
      );
      return;
    }
    if (req.method === 'GET' && url.pathname === '/status') return reply(200, { leaseMs: opts.leaseMs, authenticated: !!key, holder: book.holder ?? null, grants: stats.grants, refusals: stats.refused.held, incarnation: book.incarnation, stateFile: opts.stateFile ?? null, stateWritable: state?.writable ?? null });
    if (req.method !== 'POST' || url.pathname !== '/lease') return reply(404, { error: 'not found' });
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
      if (body.length > 4096) req.destroy();
    });
    req.on('end', () => {
      const peer = req.socket.remoteAddress;
      if (key) {
        const given = String(req.headers[MAC_HEADER] ?? '');
        if (!given || !sameMac(given, witnessMac(key, 'request', body))) {
          return refuse(reply, peer, 'WITNESS_UNAUTHORIZED', given ? 'wrong signature (is --witness-key the witness\'s key?)' : 'unsigned request (this witness needs --witness-key at the sites)', 'unauthorized');
        }
        requestMac = given;
      }
      let msg: { siteId?: unknown; role?: unknown; timeMs?: unknown; epoch?: unknown; renewing?: unknown };
      try {
        msg = JSON.parse(body) as typeof msg;
      } catch {
        stats.refused.bad_request++;
        return reply(400, { error: 'body must be JSON {siteId, role}' });
      }
      if (typeof msg.siteId !== 'string' || !msg.siteId) {
        stats.refused.bad_request++;
        return reply(400, { error: 'siteId required' });
      }
      const t = now();
      if (key) {
        // Request times are wall-clock times: compared with this machine's wall clock.
        const sent = Number(msg.timeMs);
        const wall = Date.now();
        if (!Number.isFinite(sent) || Math.abs(sent - wall) > WITNESS_SKEW_MS) {
          return refuse(reply, peer, 'WITNESS_CLOCK', `request time ${Number.isFinite(sent) ? `${Math.round((sent - wall) / 1000)} s off` : 'missing'}: the clocks of the site and the witness must agree within ${WITNESS_SKEW_MS / 1000} s`, 'clock');
        }
        if (sent <= (lastTime.get(msg.siteId) ?? 0)) return refuse(reply, peer, 'WITNESS_REPLAY', `a request of site ${msg.siteId} no newer than one already answered (a replay)`, 'replay');
        if (sent < startedWall) return refuse(reply, peer, 'WITNESS_REPLAY', `a request of site ${msg.siteId} signed ${startedWall - sent} ms before the witness started (a replay, or the site's clock is behind)`, 'replay');
        lastTime.set(msg.siteId, sent);
      }
      if (msg.epoch !== undefined && typeof msg.epoch !== 'string') {
        stats.refused.bad_request++;
        return reply(400, { error: 'epoch must be a string' });
      }
      const r = book.request(msg.siteId, String(msg.role ?? ''), t, msg.epoch, msg.renewing === true);
      if ('quietForMs' in r) {
        stats.refused.starting++;
        return reply(503, { granted: false, code: 'WITNESS_STARTING', error: `the witness started less than a lease ago: no grants for ${r.quietForMs} ms more`, retryInMs: r.quietForMs });
      }
      if (r.granted) {
        if (r.takeover) {
          stats.takeovers++;
          opts.logger.warn({ siteId: msg.siteId, role: msg.role }, 'witness: lease taken over (the previous holder stopped renewing)');
        }
        const granted = { granted: true, expiresAt: r.lease.expiresAt, leaseMs: opts.leaseMs, epoch: r.lease.epoch };
        // No grant is answered before the state file holds it (and every change of holder before it).
        return void persist().then(
          () => {
            stats.grants++;
            reply(200, granted);
          },
          (e: unknown) => {
            stats.refused.state++;
            opts.logger.warn({ err: e, stateFile: opts.stateFile, siteId: msg.siteId }, 'witness: state file not written; the grant is not given');
            reply(503, { granted: false, code: 'WITNESS_STATE', error: `the witness could not write its state file: ${(e as Error).message}` });
          },
        );
      }
      if (r.superseded) {
        stats.refused.superseded++;
        opts.logger.warn({ siteId: msg.siteId, holder: r.holder.siteId, epoch: msg.epoch }, 'witness: lease refused: this site held it before another site took over (superseded)');
        return reply(409, { granted: false, superseded: true, holder: r.holder.siteId, expiresInMs: Math.max(0, r.holder.expiresAt - t), leaseMs: opts.leaseMs });
      }
      stats.refused.held++;
      opts.logger.info({ siteId: msg.siteId, holder: r.holder.siteId, expiresInMs: r.holder.expiresAt - t }, 'witness: lease refused (held by another site)');
      return reply(409, { granted: false, holder: r.holder.siteId, expiresInMs: r.holder.expiresAt - t, leaseMs: opts.leaseMs });
    });
  });
  try {
    // The incarnation is fixed on disk before any epoch of it is handed out.
    await state?.keep(book, opts.stateCheckMs ?? 30_000);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
  } catch (e) {
    await state?.close();
    throw e;
  }
  return {
    address: server.address() as AddressInfo,
    book,
    leaseMs: opts.leaseMs,
    authenticated: !!key,
    stats: () => structuredClone(stats),
    now,
    stateWritable: () => state?.writable,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await state?.close();
    },
  };
}

/** The lease length every party uses (OFFSITE_WITNESS_LEASE_MS, default 6 s). */
export function witnessLeaseMs(): number {
  return Number(process.env.OFFSITE_WITNESS_LEASE_MS ?? 6000);
}

let lastRequestTime = 0;

export type LeaseAnswer = { granted: boolean; holder?: string; expiresInMs?: number; leaseMs?: number; epoch?: string; superseded?: boolean };

/**
 * Ask the witness for (or renew) the lease, signed with `key` when given. No usable answer
 * (unreachable, refused, an answer that is not the witness's): undefined, and `problem` says why.
 */
export async function requestLease(witness: string, siteId: string, role: string, timeoutMs: number, key?: Buffer, problem?: (why: string) => void, leaseMs?: number, epoch?: string, renewing = false): Promise<LeaseAnswer | undefined> {
  // Strictly increasing, even within a millisecond: the witness takes no request twice.
  const timeMs = (lastRequestTime = Math.max(Date.now(), lastRequestTime + 1));
  const body = JSON.stringify({ siteId, role, timeMs, ...(epoch === undefined ? {} : { epoch }), ...(renewing ? { renewing } : {}) });
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const mac = key ? witnessMac(key, 'request', body) : '';
  if (key) headers[MAC_HEADER] = mac;
  let res: Response;
  let text: string;
  try {
    res = await fetch(`http://${witness}/lease`, { method: 'POST', headers, body, signal: AbortSignal.timeout(timeoutMs) });
    text = await res.text();
  } catch (e) {
    problem?.(`witness ${witness} unreachable: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`);
    return undefined;
  }
  let answer: LeaseAnswer & { error?: string };
  try {
    answer = JSON.parse(text) as typeof answer;
  } catch {
    problem?.(`witness ${witness} answered HTTP ${res.status} without JSON`);
    return undefined;
  }
  if (res.status === 401 || res.status === 400 || res.status === 503) {
    problem?.(`witness ${witness} ${res.status === 503 ? 'is starting' : 'refused the request'}: ${answer.error ?? res.status}`);
    return undefined;
  }
  if (key) {
    const given = res.headers.get(MAC_HEADER) ?? '';
    if (!given || !sameMac(given, witnessMac(key, 'answer', mac, text))) {
      problem?.(`witness ${witness}: ${given ? 'an answer with a wrong signature' : 'an unsigned answer (is the witness started with --key-file?)'}: ignored`);
      return undefined;
    }
  }
  // Safety rests on every party timing the same lease (a site trusts its lease for half of it,
  // a replica waits a whole one): an answer timed otherwise is not used.
  if (leaseMs !== undefined && answer.leaseMs !== undefined && answer.leaseMs !== leaseMs) {
    problem?.(`witness ${witness} grants leases of ${answer.leaseMs} ms but this site times ${leaseMs} ms: its answers are not used (OFFSITE_WITNESS_LEASE_MS and the witness's --lease must agree everywhere)`);
    return undefined;
  }
  return answer;
}

/** How many of `n` witnesses must agree: a strict majority, so two majorities always share one. */
export function witnessMajority(n: number): number {
  return Math.floor(n / 2) + 1;
}

export type WitnessVote = { address: string; vote: 'granted' | 'refused' | 'none'; holder?: string; superseded?: boolean };

/**
 * Ask every witness at once and count. Granted when a majority granted; held by another site
 * when a majority refused (the answer names the holder most of them named and the longest time
 * left); otherwise no usable answer (undefined), as with one unreachable witness. Two sites can
 * never both hold a majority: the witness they share grants one lease at a time. With one witness
 * this is exactly that witness's answer.
 */
export async function requestQuorumLease(witnesses: readonly string[], siteId: string, role: string, timeoutMs: number, key?: Buffer, problem?: (why: string) => void, leaseMs?: number, epochs?: Readonly<Record<string, string>>): Promise<{ answer: LeaseAnswer | undefined; votes: WitnessVote[]; epochs: Record<string, string> }> {
  // A site that holds epochs renews everywhere, also where it has none (see LeaseBook.request).
  const renewing = !!epochs && Object.keys(epochs).length > 0;
  const answers = await Promise.all(witnesses.map((w) => requestLease(w, siteId, role, timeoutMs, key, problem, leaseMs, epochs?.[w], renewing)));
  const votes: WitnessVote[] = answers.map((a, i) => ({ address: witnesses[i], vote: a === undefined ? 'none' : a.granted ? 'granted' : 'refused', ...(a && !a.granted && a.holder ? { holder: a.holder } : {}), ...(a?.superseded ? { superseded: true } : {}) }));
  /** The epoch each granting witness named (the site's to send with its next renewal there). */
  const granted: Record<string, string> = {};
  answers.forEach((a, i) => {
    if (a?.granted && typeof a.epoch === 'string') granted[witnesses[i]] = a.epoch;
  });
  const need = witnessMajority(witnesses.length);
  const grants = votes.filter((v) => v.vote === 'granted').length;
  const refused = answers.filter((a): a is LeaseAnswer => a !== undefined && !a.granted);
  if (grants >= need) return { answer: { granted: true }, votes, epochs: granted };
  if (refused.length >= need) {
    const count = new Map<string, number>();
    for (const a of refused) count.set(a.holder ?? '', (count.get(a.holder ?? '') ?? 0) + 1);
    const holder = [...count].sort((x, y) => y[1] - x[1])[0][0] || undefined;
    const expiresInMs = Math.max(...refused.map((a) => a.expiresInMs ?? 0));
    const superseded = refused.some((a) => a.superseded) || undefined;
    return { answer: { granted: false, holder, expiresInMs, ...(superseded ? { superseded } : {}) }, votes, epochs: granted };
  }
  if (witnesses.length > 1) problem?.(`witness quorum not reached: ${grants} of ${witnesses.length} granted, ${refused.length} refused, ${witnesses.length - grants - refused.length} gave no usable answer (${need} must agree)`);
  return { answer: undefined, votes, epochs: granted };
}
