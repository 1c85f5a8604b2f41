/** Exit codes and the one place CLI commands turn errors into a message and an exit code. */
import { ConfigError, OffsiteError } from '../common/errors';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
/** Configuration and usage errors: a bad config field, flag or variable, options that do not go together. */
export const EXIT_USAGE = 2;
/** The code of OffsiteErrors that are usage errors (exit 2, like Commander's parse errors). */
export const USAGE = 'USAGE';

/**
 * Print a one-line error (no stack trace for known errors) and exit. It never returns: a
 * command releases what it holds (its pid lock, an open journal) before calling it.
 */
export function fail(err: unknown, prefix = 'offsite'): never {
  if (err instanceof ConfigError) {
    process.stderr.write(`${prefix}: ${err.message}\n`);
    process.exit(EXIT_USAGE);
  }
  if (err instanceof OffsiteError) {
    process.stderr.write(`${prefix}: ${err.message} [${err.code}]\n`);
    // A command given wrong options exits as Commander's own parse errors do.
    process.exit(err.code === USAGE ? EXIT_USAGE : EXIT_FAILURE);
  }
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && typeof e.message === 'string') {
    process.stderr.write(`${prefix}: ${e.message}\n`);
    process.exit(EXIT_FAILURE);
  }
  process.stderr.write(`${prefix}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(EXIT_FAILURE);
}
