/** Argument parsers the commands share. */
import { InvalidArgumentError } from 'commander';
import { OffsiteError } from '../common/errors';

/** A journal sequence number (`--seq`). */
export const seqNumber = (v: string): number => {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError('expected a sequence number');
  return Number(v);
};

/** `--seq`, `--time` or `--bookmark` (a point of the history): one of them, and a time that parses. */
export function checkPointOptions(opts: { seq?: number; time?: string; bookmark?: string }): void {
  const given = [opts.seq !== undefined && '--seq', opts.time !== undefined && '--time', opts.bookmark !== undefined && '--bookmark'].filter(Boolean);
  if (given.length > 1) throw new OffsiteError('USAGE', `${given.join(' and ')} are mutually exclusive`);
  if (opts.time !== undefined && Number.isNaN(Date.parse(opts.time))) throw new OffsiteError('USAGE', `--time ${opts.time} is not an ISO-8601 time`);
}
