/** Certificates for HTTPS tests, made by the real `openssl` (as an operator would make them). */
import assert from 'node:assert/strict';
import { chmodSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { run } from './exec';

/** A self-signed P-256 certificate for 127.0.0.1 and localhost in `dir` (cert.pem, key.pem with mode 600). */
export async function selfSignedCert(dir: string, name = 'http'): Promise<{ cert: string; key: string }> {
  const cert = path.join(dir, `${name}-cert.pem`);
  const key = path.join(dir, `${name}-key.pem`);
  const r = await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=offsite-test', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
  assert.equal(r.code, 0, r.stderr);
  chmodSync(key, 0o600);
  return { cert, key };
}

/** One HTTPS request trusting `ca`; resolves with the status and body. */
export function httpsRequest(url: string, ca: Buffer, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: opts.method ?? 'GET', headers: opts.headers, ca }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}
