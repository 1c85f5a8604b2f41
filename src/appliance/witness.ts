/**
 * The witness: a small third process that decides which site may accept writes. It holds one
 * lease (site, expiry). The primary renews it; a replica may take it only once it has expired,
 * i.e. once the primary has stopped renewing for a whole lease period. A primary fences itself
 * (stops acknowledging writes) well before its lease runs out when it can reach neither the
 * witness nor its replica, so the two never accept writes at the same time.
 *
 *   POST /lease {siteId, role}   → 200 {granted: true, expiresAt} | 409 {granted: false, holder, expiresInMs}
 *   GET  /status                 → the current holder
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../common/logger';

export interface WitnessOptions {
  leaseMs: number;
  logger: Logger;
  now?: () => number;
}

export interface Lease {
  siteId: string;
  role: string;
  expiresAt: number;
  grantedAt: number;
}

/** Pure lease logic (kept apart from HTTP so it can be reasoned about and tested alone). */
export class LeaseBook {
  holder?: Lease;
  grants = 0;
  refusals = 0;

  constructor(private readonly leaseMs: number) {}

  request(siteId: string, role: string, now: number): { granted: true; lease: Lease; takeover: boolean } | { granted: false; holder: Lease } {
    const h = this.holder;
    if (h && h.siteId !== siteId && h.expiresAt > now) {
      this.refusals++;
      return { granted: false, holder: h };
    }
    const takeover = !!h && h.siteId !== siteId;
    this.holder = { siteId, role, expiresAt: now + this.leaseMs, grantedAt: h && h.siteId === siteId ? h.grantedAt : now };
    this.grants++;
    return { granted: true, lease: this.holder, takeover };
  }
}

export async function startWitness(host: string, port: number, opts: WitnessOptions): Promise<{ address: AddressInfo; close(): Promise<void>; book: LeaseBook }> {
  const now = opts.now ?? Date.now;
  const book = new LeaseBook(opts.leaseMs);
  const server = http.createServer((req, res) => {
    const reply = (code: number, body: unknown) => {
      const text = JSON.stringify(body) + '\n';
      res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    const url = new URL(req.url ?? '/', 'http://witness');
    if (req.method === 'GET' && url.pathname === '/status') return reply(200, { leaseMs: opts.leaseMs, holder: book.holder ?? null, grants: book.grants, refusals: book.refusals });
    if (req.method !== 'POST' || url.pathname !== '/lease') return reply(404, { error: 'not found' });
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
      if (body.length > 4096) req.destroy();
    });
    req.on('end', () => {
      let msg: { siteId?: unknown; role?: unknown };
      try {
        msg = JSON.parse(body) as typeof msg;
      } catch {
        return reply(400, { error: 'body must be JSON {siteId, role}' });
      }
      if (typeof msg.siteId !== 'string' || !msg.siteId) return reply(400, { error: 'siteId required' });
      const t = now();
      const r = book.request(msg.siteId, String(msg.role ?? ''), t);
      if (r.granted) {
        if (r.takeover) opts.logger.warn({ siteId: msg.siteId, role: msg.role }, 'witness: lease taken over (the previous holder stopped renewing)');
        return reply(200, { granted: true, expiresAt: r.lease.expiresAt, leaseMs: opts.leaseMs });
      }
      opts.logger.info({ siteId: msg.siteId, holder: r.holder.siteId, expiresInMs: r.holder.expiresAt - t }, 'witness: lease refused (held by another site)');
      return reply(409, { granted: false, holder: r.holder.siteId, expiresInMs: r.holder.expiresAt - t });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    address: server.address() as AddressInfo,
    book,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

/** The lease length every party uses (OFFSITE_WITNESS_LEASE_MS, default 6 s). */
export function witnessLeaseMs(): number {
  return Number(process.env.OFFSITE_WITNESS_LEASE_MS ?? 6000);
}

/** Ask the witness for (or renew) the lease. Network failure: undefined. */
export async function requestLease(witness: string, siteId: string, role: string, timeoutMs: number): Promise<{ granted: boolean; holder?: string; expiresInMs?: number } | undefined> {
  try {
    const res = await fetch(`http://${witness}/lease`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ siteId, role }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    return (await res.json()) as { granted: boolean; holder?: string; expiresInMs?: number };
  } catch {
    return undefined;
  }
}
