/**
 * The iSCSI target server: accepts connections, runs logins against the target directory,
 * keeps the session table (TSIH allocation, reinstatement when an initiator port logs in
 * again), fans task management out across sessions of a target, counts what happens, and
 * shuts down by letting in-flight commands finish before dropping connections.
 */
import * as net from 'node:net';
import type { Logger } from '../common/logger';
import type { HostPort } from '../common/units';
import type { Nexus } from '../scsi/port';
import { Connection, type ConnectionHost } from './connection';
import { LoginStatus } from './constants';
import type { LoginEnvironment, LoginMachine, LoginRequestFields } from './login';
import { defaultOffer, type TargetOffer } from './negotiation';
import { Session, type SessionHost } from './session';
import type { TargetDirectory, TargetEntry } from './targets';

export interface IscsiServerOptions {
  directory: TargetDirectory;
  logger: Logger;
  portalGroupTag?: number;
  offer?: Partial<TargetOffer>;
  /** Ping an initiator idle this long (0: never). Default 5 s. */
  nopIntervalMs?: number;
  /** Drop a connection whose ping stays unanswered this long. Default 30 s. */
  nopTimeoutMs?: number;
  /** Drop a connection that has not finished logging in after this long. Default 15 s. */
  loginTimeoutMs?: number;
  /**
   * How long ABORT TASK SET and CLEAR TASK SET wait for the initiator to answer the R2Ts of the
   * tasks they abort (RFC 7143 §11.6.2) before they are answered anyway. Default: the NOP
   * timeout, at most 10 s.
   */
  tmfTransferWaitMs?: number;
  /** Connections accepted at once (beyond: refused). Default 1024. */
  maxConnections?: number;
  /**
   * Login rate limit per source address: after `failures` refused logins (initiator errors:
   * bad credentials, unknown target...) within `windowMs`, connections from that address are
   * dropped for `blockMs`. Default 10 in 60 s, blocked 60 s.
   */
  loginRateLimit?: { failures: number; windowMs: number; blockMs: number };
}

export interface IscsiStats {
  connections: number;
  sessions: number;
  sessionsByTarget: Record<string, number>;
  /** Counters: logins, login_failures, logouts, pdus_in, pdus_out, rejects, protocol_errors, nop_timeouts, reinstatements, tmf_N... */
  events: Record<string, number>;
}

export class IscsiServer implements ConnectionHost, SessionHost {
  readonly logger: Logger;
  readonly loginEnv: LoginEnvironment;
  readonly offer: TargetOffer;
  readonly portalGroupTag: number;
  readonly nopIntervalMs: number;
  readonly nopTimeoutMs: number;
  readonly loginTimeoutMs: number;
  readonly tmfTransferWaitMs: number;
  private readonly maxConns: number;
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private readonly sessions = new Map<number, Session>();
  private readonly events = new Map<string, number>();
  private nextTsih = 1;
  private nextConnId = 1;
  private closing = false;
  private readonly failures = new Map<string, number[]>();
  private readonly blocked = new Map<string, number>();

  constructor(private readonly opts: IscsiServerOptions) {
    this.logger = opts.logger;
    this.portalGroupTag = opts.portalGroupTag ?? 1;
    this.offer = { ...defaultOffer(), ...opts.offer };
    this.loginEnv = { directory: opts.directory, offer: this.offer, portalGroupTag: this.portalGroupTag };
    this.nopIntervalMs = opts.nopIntervalMs ?? 5000;
    this.nopTimeoutMs = opts.nopTimeoutMs ?? 30000;
    this.loginTimeoutMs = opts.loginTimeoutMs ?? 15000;
    this.tmfTransferWaitMs = opts.tmfTransferWaitMs ?? Math.min(this.nopTimeoutMs || 10_000, 10_000);
    this.maxConns = opts.maxConnections ?? 1024;
    // Paused: each connection then reads into its own buffer (Connection).
    this.server = net.createServer({ pauseOnConnect: true }, (s) => this.accept(s));
    this.server.on('error', (e) => this.logger.error({ err: e }, 'iSCSI listener error'));
  }

  listen(host: string, port: number): Promise<HostPort> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  private accept(socket: net.Socket): void {
    if (this.closing || this.connections.size >= this.maxConns) {
      this.count('connections_refused');
      socket.destroy();
      return;
    }
    const from = socket.remoteAddress ?? '';
    const until = this.blocked.get(from);
    if (until !== undefined) {
      if (performance.now() < until) {
        this.count('connections_rate_limited');
        socket.destroy();
        return;
      }
      this.blocked.delete(from);
    }
    const conn = new Connection(socket, this, this.nextConnId++);
    this.connections.add(conn);
    this.count('connections_accepted');
  }

  loginRefused(remoteAddress: string): void {
    const limit = this.opts.loginRateLimit ?? { failures: 10, windowMs: 60_000, blockMs: 60_000 };
    const now = performance.now();
    const recent = (this.failures.get(remoteAddress) ?? []).filter((t) => now - t < limit.windowMs);
    recent.push(now);
    this.failures.set(remoteAddress, recent);
    if (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value as string);
    if (recent.length >= limit.failures && !this.blocked.has(remoteAddress)) {
      this.blocked.set(remoteAddress, now + limit.blockMs);
      this.failures.delete(remoteAddress);
      this.count('login_rate_limited');
      this.logger.warn({ source: remoteAddress, failures: recent.length, windowMs: limit.windowMs, blockMs: limit.blockMs }, 'login rate limit: too many refused logins from this address; its connections are dropped for a while');
    }
  }

  count(event: string, n = 1): void {
    this.events.set(event, (this.events.get(event) ?? 0) + n);
  }

  openSession(conn: Connection, login: LoginMachine, first: LoginRequestFields): Session | LoginStatus {
    if (this.closing) return LoginStatus.ServiceUnavailable;
    const tsih = this.allocTsih();
    if (tsih === 0) return LoginStatus.OutOfResources;
    const target = login.sessionType === 'Normal' ? login.target : undefined;
    const logger = this.logger.child({ conn: conn.id, initiator: login.initiatorName, target: target?.name, tsih });
    const session = new Session(tsih, login.sessionType, login.initiatorName!, first.isid, target, login.params, first.cmdSN, conn, this, logger);
    // Reinstatement: the same initiator port (name + ISID) logging in again to the same target
    // replaces the old session (RFC 7143 §6.3.5). The new nexus starts before the old one ends,
    // so per-nexus SCSI state (unit attentions, reservations) carries over.
    let old: Session | undefined;
    if (target) for (const s of this.sessions.values()) if (s.key === session.key && !s.closed) old = s;
    this.sessions.set(tsih, session);
    if (session.nexus && target) {
      target.scsi.attachTransport({ abortNexusTasks: (lun, match) => this.abortNexusTasks(target.name, lun, match) });
      target.scsi.nexusStarted(session.nexus, !!old);
    }
    if (old) {
      this.count('reinstatements');
      this.logger.info({ initiator: old.initiatorName, target: target?.name, oldTsih: old.tsih, tsih }, 'session reinstated');
      for (const c of this.connections) if (c.session === old) c.destroy();
    }
    return session;
  }

  private allocTsih(): number {
    for (let i = 0; i < 0xffff; i++) {
      const t = this.nextTsih;
      this.nextTsih = this.nextTsih >= 0xffff ? 1 : this.nextTsih + 1;
      if (!this.sessions.has(t)) return t;
    }
    return 0;
  }

  sessionEnded(s: Session): void {
    if (this.sessions.get(s.tsih) !== s) return;
    this.sessions.delete(s.tsih);
    if (s.nexus && s.target) s.target.scsi.nexusEnded(s.nexus);
  }

  sessionsOf(targetName: string): readonly Session[] {
    return [...this.sessions.values()].filter((s) => s.target?.name === targetName && !s.closed);
  }

  /**
   * The SCSI layer's PREEMPT AND ABORT: the tasks for `lun` of the target's sessions whose nexus
   * `match` picks are aborted as by ABORT TASK SET (no status sent; see Session.taskManagement,
   * which does the same for LU RESET over every session); resolves once those already executing
   * have settled, so none of them lands after the PERSISTENT RESERVE OUT completes.
   */
  async abortNexusTasks(targetName: string, lun: number, match: (n: Nexus) => boolean): Promise<void> {
    const sessions = this.sessionsOf(targetName).filter((s) => s.nexus !== undefined && match(s.nexus));
    if (sessions.length === 0) return;
    this.count('preempt_aborts', sessions.length);
    this.logger.info({ target: targetName, lun, sessions: sessions.map((s) => s.tsih) }, 'PREEMPT AND ABORT: aborting the tasks of the preempted sessions');
    await Promise.all(sessions.map((s) => s.abortTasks((l) => l === lun)));
  }

  /**
   * End every session logged in to a target that goes away (a volume removed, a test copy
   * discarded): their connections are dropped, their tasks aborted. Returns how many ended.
   */
  async endSessionsOf(targetName: string): Promise<number> {
    const sessions = this.sessionsOf(targetName);
    for (const c of this.connections) if (c.session && sessions.includes(c.session)) c.destroy();
    for (const s of sessions) await s.close().catch(() => undefined);
    return sessions.length;
  }

  visibleTargets(initiatorName: string): readonly TargetEntry[] {
    return this.opts.directory.targets().filter((t) => !t.auth.allowedInitiators?.length || t.auth.allowedInitiators.includes(initiatorName));
  }

  connectionClosed(conn: Connection): void {
    this.connections.delete(conn);
  }

  stats(): IscsiStats {
    const sessionsByTarget: Record<string, number> = {};
    for (const s of this.sessions.values()) if (s.target) sessionsByTarget[s.target.name] = (sessionsByTarget[s.target.name] ?? 0) + 1;
    return { connections: this.connections.size, sessions: this.sessions.size, sessionsByTarget, events: Object.fromEntries(this.events) };
  }

  /** Stop accepting, let in-flight commands finish (bounded), then drop every connection. */
  async close(drainMs = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const listening = new Promise<void>((r) => this.server.close(() => r()));
    const conns = [...this.connections];
    await Promise.all(conns.map((c) => c.session?.drain(drainMs)));
    for (const c of conns) c.destroy();
    await listening;
    if (conns.length) this.logger.info({ connections: conns.length }, 'iSCSI sessions dropped at shutdown');
  }
}
