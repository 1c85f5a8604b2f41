/** Parsing of operator-facing quantities: sizes, durations, host:port. Pure functions. */
import { ConfigError } from './errors';

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

/** "1G", "1GiB", "512MB", "4096" → bytes. K/M/G/T alone are binary (1024-based). */
export function parseSize(text: string, field = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new ConfigError(`${field}: '${text}' is not a size (examples: 1G, 512MiB, 4096)`, field);
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new ConfigError(`${field}: '${text}' is too large`, field);
  return bytes;
}

/**
 * A link rate → bytes per second. "10MB/s", "10MiB/s", "100Mbit", "1Gbit/s", "500KB/s", or a
 * size (per second). "0" or "unlimited": no limit (0).
 */
export function parseRate(text: string, field = 'rate'): number {
  const t = text.trim().toLowerCase();
  if (t === '0' || t === 'unlimited' || t === 'none') return 0;
  const bits = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit|bps|b\/s)?(?:\/s)?$/.exec(t);
  if (bits && /(bit|bps)/.test(t)) {
    const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 }[bits[2]]!;
    return Math.round((Number(bits[1]) * mult) / 8);
  }
  const m = /^(.*?)(?:\/s|ps)?$/.exec(t);
  try {
    return parseSize(m ? m[1] : t, field);
  } catch {
    throw new ConfigError(`${field}: '${text}' is not a rate (examples: 10MB/s, 100Mbit, 1GiB/s, unlimited)`, field);
  }
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "250ms", "5s", "10m", "1h30m", "2d" → milliseconds. A bare number is seconds. */
export function parseDuration(text: string, field = 'duration'): number {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    total += Number(m[1]) * DURATION_UNITS[m[2]];
    consumed = re.lastIndex;
  }
  if (consumed === 0 || consumed !== t.length) {
    throw new ConfigError(`${field}: '${text}' is not a duration (examples: 500ms, 5s, 10m, 1h30m)`, field);
  }
  return Math.round(total);
}

export interface HostPort {
  host: string;
  port: number;
}

/** "127.0.0.1:3260", "[::1]:3260", ":3260" (all interfaces) → {host, port}. */
export function parseHostPort(text: string, field = 'address'): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new ConfigError(`${field}: '${text}' is not HOST:PORT (example: 127.0.0.1:3260)`, field);
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}
