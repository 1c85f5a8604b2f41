/**
 * Loading the project's small N-API addons (native/*.c, built by `make build` into
 * native/build). Each is optional: without it the caller falls back to portable code.
 */
import path from 'node:path';

export function loadAddon<T>(name: string): T | undefined {
  if (process.env.OFFSITE_NO_NATIVE === '1') return undefined;
  try {
    return require(path.resolve(__dirname, '../../../native/build', `${name}.node`)) as T;
  } catch {
    return undefined;
  }
}
