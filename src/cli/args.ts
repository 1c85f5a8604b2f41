/** Argument parsers the commands share. */
import { InvalidArgumentError } from 'commander';

/** A journal sequence number (`--seq`). */
export const seqNumber = (v: string): number => {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError('expected a sequence number');
  return Number(v);
};
