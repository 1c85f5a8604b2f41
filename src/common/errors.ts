/**
 * Typed errors with stable codes. Tests and callers match `code`, never message text.
 * Every layer defines its own subclasses (or uses OffsiteError with a layer-prefixed code).
 */
export class OffsiteError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Configuration or command-line input that cannot be used. Exit code 2 at the CLI. */
export class ConfigError extends OffsiteError {
  constructor(message: string, readonly field?: string) {
    super('OFFSITE_CONFIG_INVALID', message);
  }
}
