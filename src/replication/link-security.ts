/**
 * Replication link security: TLS 1.3 with a pre-shared key (both sites hold the same key file,
 * made by `offsite keygen`). A peer with another key fails the TLS handshake, so nothing of the
 * journal ever flows to or from it. Plain TCP only when the operator says --insecure-link.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { ReplicationError, ReplicationErrorCode as Code } from './errors';

export interface LinkKey {
  identity: string;
  psk: Buffer;
}

const CIPHERS = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';

export function newLinkKey(identity = 'offsite-link'): { identity: string; psk: string } {
  return { identity, psk: randomBytes(32).toString('hex') };
}

export async function readLinkKey(file: string): Promise<LinkKey> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (e) {
    throw new ReplicationError(Code.Handshake, `link key ${file}: ${(e as Error).message}`);
  }
  const k = raw as { identity?: unknown; psk?: unknown };
  if (typeof k.identity !== 'string' || !k.identity || typeof k.psk !== 'string' || !/^[0-9a-f]{64}$/i.test(k.psk)) {
    throw new ReplicationError(Code.Handshake, `link key ${file}: expected {"identity": "...", "psk": "<64 hex digits>"} (make one with offsite keygen --link-key FILE)`);
  }
  const st = await fsp.stat(file);
  if (st.mode & 0o077) throw new ReplicationError(Code.Handshake, `link key ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`);
  return { identity: k.identity, psk: Buffer.from(k.psk, 'hex') };
}

/** Client side (the primary dials the replica). Emits 'secureConnect' when authenticated. */
export function connectSecure(host: string, port: number, key: LinkKey): tls.TLSSocket {
  return tls.connect({
    host,
    port,
    pskCallback: () => ({ psk: key.psk, identity: key.identity }),
    ciphers: CIPHERS,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    // PSK authenticates both ends; there is no certificate to check.
    checkServerIdentity: () => undefined,
  });
}

/** Server side: only a client proving the same key completes the handshake. */
export function createSecureServer(key: LinkKey, onSecure: (s: net.Socket) => void, onRefused: (peer: string, why: string) => void): tls.Server {
  const server = tls.createServer(
    {
      pskCallback: (_socket, identity) => (identity === key.identity ? key.psk : null),
      ciphers: CIPHERS,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      handshakeTimeout: 10_000,
    },
    onSecure,
  );
  server.on('tlsClientError', (err, socket) => {
    onRefused(`${socket.remoteAddress}:${socket.remotePort}`, err.message);
    socket.destroy();
  });
  return server;
}
