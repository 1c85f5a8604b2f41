/** The admin commands' options, checked against a stand-in HTTP API that records what it is asked. */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'node:test';
import { CLI } from '../helpers/appliance';
import { run } from '../helpers/exec';

/** An HTTP server answering every POST with `answer`, recording method, path and JSON body. */
async function standIn(answer: Record<string, unknown>): Promise<{ port: number; calls: { method: string; url: string; body: unknown }[]; close(): Promise<void> }> {
  const calls: { method: string; url: string; body: unknown }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      calls.push({ method: req.method ?? '', url: req.url ?? '', body: chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : undefined });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as AddressInfo).port, calls, close: () => new Promise((r) => server.close(() => r())) };
}

test('demote sends the address where the new primary connects, and refuses one that is no address before asking the appliance', async () => {
  const api = await standIn({ role: 'replica', ms: 12 });
  try {
    const addr = `127.0.0.1:${api.port}`;
    let r = await run(process.execPath, [CLI, 'demote', '--http', addr, '--replication-listen', '127.0.0.1:7772']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /demoted in 12 ms: now a replica listening on 127\.0\.0\.1:7772/);
    assert.deepEqual(api.calls.map((c) => [c.method, c.url, c.body]), [['POST', '/demote', { replicationListen: '127.0.0.1:7772' }]]);
    for (const args of [['--replication-listen', 'nowhere'], []]) {
      r = await run(process.execPath, [CLI, 'demote', '--http', addr, ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    }
    assert.equal(api.calls.length, 1);
  } finally {
    await api.close();
  }
});
