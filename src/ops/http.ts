/** The HTTP side of an appliance: GET /status (JSON), GET /metrics (Prometheus text). */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from '../common/logger';

export interface HttpRoutes {
  status(): unknown;
  metrics: Registry;
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
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = `${req.method} ${url.pathname}`;
    (async () => {
      switch (route) {
        case 'GET /status':
          return send(res, 200, 'application/json', JSON.stringify(routes.status(), null, 2) + '\n');
        case 'GET /metrics':
          return send(res, 200, routes.metrics.contentType, await routes.metrics.metrics());
        case 'GET /healthz':
          return send(res, 200, 'text/plain', 'ok\n');
        default:
          return send(res, 404, 'application/json', JSON.stringify({ error: 'not found', code: 'HTTP_NOT_FOUND' }) + '\n');
      }
    })().catch((e: unknown) => {
      logger.error({ err: e, route }, 'http handler failed');
      if (!res.headersSent) send(res, 500, 'application/json', JSON.stringify({ error: 'internal error', code: 'HTTP_INTERNAL' }) + '\n');
    });
  });
  server.on('clientError', (_err, socket) => socket.destroy());
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
