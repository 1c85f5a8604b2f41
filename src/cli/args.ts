/** Argument parsers the commands share. */
import { InvalidArgumentError } from 'commander';
import { OffsiteError } from '../common/errors';

/** A journal sequence number (`--seq`). */
export const seqNumber = (v: string): number => {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError('expected a sequence number');
  return Number(v);
};

/** `--seq` and `--time` (a point of the history): not both, and a time that parses. */
export function checkPointOptions(opts: { seq?: number; time?: string }): void {
  if (opts.seq !== undefined && opts.time !== undefined) throw new OffsiteError('USAGE', '--seq and --time are mutually exclusive');
  if (opts.time !== undefined && Number.isNaN(Date.parse(opts.time))) throw new OffsiteError('USAGE', `--time ${opts.time} is not an ISO-8601 time`);
}
