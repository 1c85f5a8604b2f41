#!/usr/bin/env node
/** The `offsite` command. Each subcommand lives in its own module with a `register(program)`. */
import { Command, CommanderError } from 'commander';
import { EXIT_USAGE } from './exit';
import { register as registerServe } from './serve';

const program = new Command();
program
  .name('offsite')
  .description('Asynchronous journaled block replication with an iSCSI target')
  .version(require('../../../package.json').version as string)
  .showHelpAfterError()
  .exitOverride((err: CommanderError) => {
    process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
  });

registerServe(program);

for (const mod of ['./commands/replay', './commands/journal']) {
  try {
    // Optional command modules register themselves when present.
    (require(mod) as { register(p: Command): void }).register(program);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
  }
}

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`offsite: ${(e as Error).message}\n`);
  process.exit(1);
});
