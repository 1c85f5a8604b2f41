/** Logging setup: structured JSON by default, pretty when stdout is a terminal. Secrets redacted. */
import pino from 'pino';
import type { Logger } from '../common/logger';

export const REDACT_PATHS = ['secret', '*.secret', '*.*.secret', 'auth.chap', 'auth.mutualChap', 'password', '*.password', 'token', '*.token'];

export function createLogger(level: string, opts: { pretty?: boolean; name?: string } = {}): Logger {
  const pretty = opts.pretty ?? (process.stdout.isTTY === true && process.env.OFFSITE_LOG_FORMAT !== 'json');
  const base = { level, name: opts.name ?? 'offsite', redact: { paths: REDACT_PATHS, censor: '[redacted]' } };
  if (pretty) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } });
  }
  return pino(base, pino.destination({ dest: 1, sync: false }));
}
