import pino from 'pino';

/** The structured logger every layer takes by injection (pino's interface). */
export type Logger = pino.Logger;

/**
 * A gate for log lines that outside input can repeat at will (refused handshakes, refused
 * requests): call it per event; it returns the number of events it held back since the last line
 * when this one may be logged, or undefined while at most one line per `intervalMs` is due.
 */
export function logGate(intervalMs: number): () => number | undefined {
  let last = -Infinity;
  let held = 0;
  return () => {
    const now = Date.now();
    if (now - last < intervalMs) {
      held++;
      return undefined;
    }
    last = now;
    const skipped = held;
    held = 0;
    return skipped;
  };
}

/** A logger that drops everything; for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
