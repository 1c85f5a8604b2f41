import pino from 'pino';

/** The structured logger every layer takes by injection (pino's interface). */
export type Logger = pino.Logger;

/** A logger that drops everything; for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
