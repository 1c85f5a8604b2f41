/** The HTTP side of an appliance: GET /status (JSON), GET /metrics (Prometheus text), the admin API; over HTTPS when given a certificate. */
import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { logGate, type Logger } from '../common/logger';
import { OffsiteError } from '../common/errors';
import { parseDuration, parseHostPort, parseRate, parseSize } from '../common/units';
import type { VerifyRequest } from '../replication/verify';
import { isRpoPolicy, type RpoPolicy } from '../replication/rpo';

/** A request field parsed by `parse`: its error (a ConfigError's message) becomes a 400. */
function badRequestOn<T>(parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    throw new HttpError(400, 'HTTP_BAD_REQUEST', (e as Error).message);
  }
}

/** An earlier point of the history, as a request names it. */
type PointAsked = { seq?: number; timeMs?: number; bookmark?: string };

/** The point in a request: `seq` (a sequence number), `time` (ISO-8601) or `bookmark` (a name), at most one. */
function pointIn(body: Record<string, unknown>): PointAsked {
  const at: PointAsked = {};
  if (body.bookmark !== undefined) {
    if (typeof body.bookmark !== 'string' || !body.bookmark) throw new HttpError(400, 'HTTP_BAD_REQUEST', `bookmark ${JSON.stringify(body.bookmark)} must be a bookmark's name`);
    at.bookmark = body.bookmark;
  }
  if (body.seq !== undefined) {
    if (typeof body.seq !== 'number' || !Number.isSafeInteger(body.seq) || body.seq < 0) throw new HttpError(400, 'HTTP_BAD_REQUEST', `seq ${JSON.stringify(body.seq)} must be a sequence number (an integer ≥ 0)`);
    at.seq = body.seq;
  }
  if (body.time !== undefined) {
    at.timeMs = typeof body.time === 'string' ? Date.parse(body.time) : NaN;
    if (Number.isNaN(at.timeMs)) throw new HttpError(400, 'HTTP_BAD_REQUEST', `time ${JSON.stringify(body.time)} must be an ISO-8601 time`);
  }
  if ([at.seq, at.timeMs, at.bookmark].filter((x) => x !== undefined).length > 1) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give one of seq, time and bookmark');
  return at;
}

function checkHostPort(v: string, field: string): void {
  badRequestOn(() => parseHostPort(v, field));
}

/** Admin actions an appliance offers over HTTP; each throws an OffsiteError (with a code) to refuse. */
export interface AdminActions {
  /** A new cap (bytes/s, 0: none), or 'configured' to return to the configured one. */
  setBandwidth?(bytesPerSec: number | 'configured'): unknown;
  /** `seq`/`timeMs`: promote at an earlier point of the replica's retained history. */
  promote?(req: { force?: boolean; replicateTo?: string } & PointAsked): Promise<unknown>;
  demote?(req: { replicationListen?: string }): Promise<unknown>;
  /** `at`: an earlier point of the replica's retained history for the copies (sequence or time). */
  testFailover?(action: 'start' | 'stop', at?: PointAsked): Promise<unknown>;
  /** Take a bookmark (a name for the point after every write acknowledged so far). */
  addBookmark?(name: string): Promise<unknown>;
  replicateTo?(req: { replicateTo?: string }): Promise<unknown>;
  /** Online verify against the replica: start (these volumes, all when empty; scan rate cap, 0: none) or stop. */
  verify?(req: VerifyRequest): Promise<unknown>;
  /** Stop shipping (the link stays up, the journal keeps every write), kept across restarts; and ship again. */
  pause?(req: { reason?: string }): Promise<unknown>;
  resume?(): Promise<unknown>;
  /** Grow a volume online (never shrink). */
  resize?(req: { volume: string; sizeBytes: number }): Promise<unknown>;
  /** Add a volume online. */
  addVolume?(req: { name: string; sizeBytes: number }): Promise<unknown>;
  /** Remove a volume (its files are moved aside); `force` ends the sessions logged in to it. */
  removeVolume?(req: { name: string; force: boolean }): Promise<unknown>;
  /** A new RPO target (ms) and/or policy, or 'configured' to return to the configured ones. */
  setRpo?(req: { targetMs?: number; policy?: RpoPolicy } | 'configured'): Promise<unknown>;
}

export interface HttpRoutes {
  status(): unknown;
  /** GET /history?bucket=SECONDS: the retained records by time. */
  history?(bucketMs: number): Promise<unknown>;
  /** GET /bookmarks: the bookmarks held here. */
  bookmarks?(): unknown;
  metrics: Registry;
  admin?: AdminActions;
  /** Admin calls need `Authorization: Bearer <token>`; without a token they are refused. */
  adminToken?: string;
  /** A monitoring-only listener: GET /status, /metrics, /history, /bookmarks and /healthz; every other request is refused. */
  readOnly?: boolean;
  /** Serve HTTPS with this PEM certificate (chain) and key; plain HTTP without. */
  tls?: { cert: Buffer; key: Buffer };
}

function checkAdmin(req: http.IncomingMessage, token: string | undefined): void {
  if (!token) throw new HttpError(403, 'ADMIN_DISABLED', 'the admin API is disabled: start the appliance with --admin-token-file FILE (or OFFSITE_ADMIN_TOKEN)');
  const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  const given = Buffer.from(m ? m[1].trim() : '');
  const want = Buffer.from(token);
  if (!m || given.length !== want.length || !timingSafeEqual(given, want)) {
    throw new HttpError(401, 'ADMIN_UNAUTHORIZED', `admin call refused from ${req.socket.remoteAddress ?? '?'}: ${m ? 'wrong' : 'no'} bearer token`);
  }
}

async function readJson(req: http.IncomingMessage, limit = 64 * 1024): Promise<Record<string, unknown>> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > limit) throw new HttpError(413, 'HTTP_TOO_LARGE', 'request body too large');
    chunks.push(c as Buffer);
  }
  if (!size) return {};
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new HttpError(400, 'HTTP_BAD_JSON', `request body is not a JSON object: ${(e as Error).message}`);
  }
}

/** A request's size: `size` ("2G", "512MiB", bytes) or `sizeBytes`. */
function sizeFrom(body: Record<string, unknown>): number {
  const raw = body.size ?? body.sizeBytes;
  const sizeBytes = typeof raw === 'number' ? raw : badRequestOn(() => parseSize(String(raw ?? ''), 'size'));
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new HttpError(400, 'HTTP_BAD_REQUEST', `size ${String(raw)} must be a positive whole number of bytes`);
  return sizeBytes;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export interface OpsHttpServer {
  readonly address: AddressInfo;
  close(): Promise<void>;
}

function send(res: http.ServerResponse, code: number, type: string, body: string): void {
  res.writeHead(code, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

export async function startHttp(host: string, port: number, routes: HttpRoutes, logger: Logger): Promise<OpsHttpServer> {
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = `${req.method} ${url.pathname}`;
    (async () => {
      if (req.method === 'POST') {
        if (routes.readOnly) throw new HttpError(403, 'ADMIN_NOT_HERE', `admin calls are not served on this address (monitoring only): ${route} from ${req.socket.remoteAddress ?? '?'}`);
        checkAdmin(req, routes.adminToken);
      }
      switch (route) {
        case 'GET /status':
          return send(res, 200, 'application/json', JSON.stringify(routes.status(), null, 2) + '\n');
        case 'GET /metrics':
          return send(res, 200, routes.metrics.contentType, await routes.metrics.metrics());
        case 'GET /history': {
          if (!routes.history) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no history here');
          const raw = url.searchParams.get('bucket') ?? '60';
          const seconds = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : badRequestOn(() => parseDuration(raw, 'bucket') / 1000);
          if (!(seconds >= 0.001) || seconds > 86_400 * 366) throw new HttpError(400, 'HTTP_BAD_REQUEST', `bucket ${raw} must be a duration from 1ms to a year (seconds, or e.g. 10s, 5m)`);
          return send(res, 200, 'application/json', JSON.stringify(await routes.history(seconds * 1000), null, 2) + '\n');
        }
        case 'GET /bookmarks':
          if (!routes.bookmarks) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no bookmarks here');
          return send(res, 200, 'application/json', JSON.stringify({ bookmarks: routes.bookmarks() }, null, 2) + '\n');
        case 'POST /bookmarks': {
          if (!routes.admin?.addBookmark) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          if (typeof body.name !== 'string' || !body.name) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give {"name": "..."}');
          return send(res, 201, 'application/json', JSON.stringify(await routes.admin.addBookmark(body.name)) + '\n');
        }
        case 'GET /healthz':
          return send(res, 200, 'text/plain', 'ok\n');
        case 'POST /bandwidth': {
          if (!routes.admin?.setBandwidth) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const raw = body.rate ?? body.bytesPerSec ?? url.searchParams.get('rate');
          const reset = body.reset === true || url.searchParams.get('reset') === 'true';
          if (reset && raw !== undefined && raw !== null) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give either a rate or reset, not both');
          if (reset) return send(res, 200, 'application/json', JSON.stringify(await routes.admin.setBandwidth('configured')) + '\n');
          if (raw === undefined || raw === null) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give {"rate": "10MB/s"} (or bytesPerSec; 0 or "unlimited" lifts the cap), or {"reset": true} for the configured cap');
          const rate = typeof raw === 'number' ? raw : badRequestOn(() => parseRate(String(raw), 'rate'));
          if (!Number.isFinite(rate) || rate < 0) throw new HttpError(400, 'HTTP_BAD_REQUEST', `rate ${String(raw)} must be ≥ 0`);
          const result = await routes.admin.setBandwidth(Math.round(rate));
          return send(res, 200, 'application/json', JSON.stringify(result ?? { maxBandwidthBytesPerSec: Math.round(rate) }) + '\n');
        }
        case 'POST /promote': {
          if (!routes.admin?.promote) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const replicateTo = body.replicateTo === undefined ? undefined : String(body.replicateTo);
          if (replicateTo) checkHostPort(replicateTo, 'replicateTo');
          const result = await routes.admin.promote({ force: body.force === true, replicateTo, ...pointIn(body) });
          return send(res, 200, 'application/json', JSON.stringify(result) + '\n');
        }
        case 'POST /test-failover': {
          if (!routes.admin?.testFailover) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const action = body.action ?? 'start';
          if (action !== 'start' && action !== 'stop') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'action must be start or stop');
          const at = pointIn(body);
          if (action === 'stop' && (at.seq !== undefined || at.timeMs !== undefined || at.bookmark !== undefined)) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'seq, time and bookmark go with start');
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.testFailover(action, at)) + '\n');
        }
        case 'POST /replicate-to': {
          if (!routes.admin?.replicateTo) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const to = body.replicateTo === undefined || body.replicateTo === null ? undefined : String(body.replicateTo);
          if (to) checkHostPort(to, 'replicateTo');
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.replicateTo({ replicateTo: to })) + '\n');
        }
        case 'POST /verify': {
          if (!routes.admin?.verify) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const stop = body.stop === true;
          const volumes = body.volumes ?? [];
          if (!Array.isArray(volumes) || !volumes.every((v) => typeof v === 'string' && v !== '')) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'volumes must be a list of volume names');
          let rate = 0;
          if (body.rate !== undefined && body.rate !== null) {
            rate = typeof body.rate === 'number' ? body.rate : badRequestOn(() => parseRate(String(body.rate), 'rate'));
            if (!Number.isFinite(rate) || rate < 0) throw new HttpError(400, 'HTTP_BAD_REQUEST', `rate ${String(body.rate)} must be ≥ 0`);
          }
          const repair = body.repair === true;
          if (body.repair !== undefined && typeof body.repair !== 'boolean') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'repair must be true or false');
          if (stop && (volumes.length || rate || repair)) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'stop takes no volumes, rate or repair');
          const result = await routes.admin.verify({ volumes: volumes as string[], rateBytesPerSec: Math.round(rate), stop, repair });
          return send(res, stop ? 200 : 202, 'application/json', JSON.stringify(result) + '\n');
        }
        case 'POST /resize': {
          if (!routes.admin?.resize) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          if (typeof body.volume !== 'string' || body.volume === '') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give {"volume": "NAME", "size": "2G"} (or sizeBytes)');
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.resize({ volume: body.volume, sizeBytes: sizeFrom(body) })) + '\n');
        }
        case 'POST /volumes': {
          if (!routes.admin?.addVolume) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          if (typeof body.name !== 'string' || body.name === '') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give {"name": "NAME", "size": "2G"} (or sizeBytes)');
          return send(res, 201, 'application/json', JSON.stringify(await routes.admin.addVolume({ name: body.name, sizeBytes: sizeFrom(body) })) + '\n');
        }
        case 'POST /volumes/remove': {
          if (!routes.admin?.removeVolume) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          if (typeof body.name !== 'string' || body.name === '') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give {"name": "NAME"} (and "force": true to end the sessions logged in to it)');
          if (body.force !== undefined && typeof body.force !== 'boolean') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'force must be true or false');
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.removeVolume({ name: body.name, force: body.force === true })) + '\n');
        }
        case 'POST /rpo': {
          if (!routes.admin?.setRpo) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const given = body.target !== undefined || body.policy !== undefined;
          if (body.reset === true) {
            if (given) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give a target and/or policy, or reset, not both');
            return send(res, 200, 'application/json', JSON.stringify(await routes.admin.setRpo('configured')) + '\n');
          }
          if (!given) throw new HttpError(400, 'HTTP_BAD_REQUEST', 'give {"target": "30s"} (seconds as a number, 0: none) and/or {"policy": "coalesce|throttle|alert"}, or {"reset": true}');
          let targetMs: number | undefined;
          if (body.target !== undefined) {
            targetMs = typeof body.target === 'number' ? body.target * 1000 : badRequestOn(() => parseDuration(String(body.target), 'target'));
            if (!Number.isFinite(targetMs) || targetMs < 0) throw new HttpError(400, 'HTTP_BAD_REQUEST', `target ${String(body.target)} must be ≥ 0`);
          }
          const policy = body.policy;
          if (policy !== undefined && !isRpoPolicy(policy)) throw new HttpError(400, 'HTTP_BAD_REQUEST', `policy ${String(policy)} must be coalesce, throttle or alert`);
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.setRpo({ targetMs: targetMs === undefined ? undefined : Math.round(targetMs), policy })) + '\n');
        }
        case 'POST /pause': {
          if (!routes.admin?.pause) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          if (body.reason !== undefined && typeof body.reason !== 'string') throw new HttpError(400, 'HTTP_BAD_REQUEST', 'reason must be a string');
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.pause({ reason: body.reason as string | undefined })) + '\n');
        }
        case 'POST /resume': {
          if (!routes.admin?.resume) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          await readJson(req);
          return send(res, 200, 'application/json', JSON.stringify(await routes.admin.resume()) + '\n');
        }
        case 'POST /demote': {
          if (!routes.admin?.demote) throw new HttpError(404, 'HTTP_NOT_FOUND', 'no admin API here');
          const body = await readJson(req);
          const replicationListen = body.replicationListen === undefined ? undefined : String(body.replicationListen);
          if (replicationListen) checkHostPort(replicationListen, 'replicationListen');
          const result = await routes.admin.demote({ replicationListen });
          return send(res, 200, 'application/json', JSON.stringify(result) + '\n');
        }
        default:
          return send(res, 404, 'application/json', JSON.stringify({ error: 'not found', code: 'HTTP_NOT_FOUND' }) + '\n');
      }
    })().catch((e: unknown) => {
      if (e instanceof OffsiteError && !(e instanceof HttpError)) {
        logger.warn({ route, code: e.code }, e.message);
        return send(res, 409, 'application/json', JSON.stringify({ error: e.message, code: e.code }) + '\n');
      }
      if (e instanceof HttpError) {
        logger.warn({ route, code: e.code, status: e.status }, e.message);
        return send(res, e.status, 'application/json', JSON.stringify({ error: e.message, code: e.code }) + '\n');
      }
      logger.error({ err: e, route }, 'http handler failed');
      if (!res.headersSent) send(res, 500, 'application/json', JSON.stringify({ error: 'internal error', code: 'HTTP_INTERNAL' }) + '\n');
    });
  };
  const server = routes.tls ? https.createServer({ cert: routes.tls.cert, key: routes.tls.key, minVersion: 'TLSv1.2' }, handler) : http.createServer(handler);
  server.on('clientError', (_err, socket) => socket.destroy());
  if (routes.tls) {
    // A client speaking plain HTTP, or distrusting the certificate: logged, the socket closed, nothing else touched.
    const gate = logGate(1000);
    // The client's address, kept from the connection: a socket the client already closed has none.
    const peers = new WeakMap<object, string>();
    server.on('connection', (raw: Socket) => peers.set(raw, raw.remoteAddress ?? '?'));
    server.on('tlsClientError', (err: Error & { code?: string }, socket) => {
      const skipped = gate();
      if (skipped !== undefined) {
        const why =
          err.code === 'ERR_SSL_HTTP_REQUEST' ? 'a plain-HTTP request on the HTTPS port' : err.code === 'ECONNRESET' ? 'the client closed the connection during the handshake (does it trust the certificate?)' : err.message.split('\n')[0];
        const raw = (socket as unknown as { _parent?: object })._parent;
        logger.warn({ peer: socket.remoteAddress ?? (raw && peers.get(raw)), code: err.code, alsoRefused: skipped || undefined }, `https: TLS handshake refused: ${why}`);
      }
      socket.destroy();
    });
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
