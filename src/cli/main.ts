#!/usr/bin/env node
/** The `offsite` command. Each subcommand lives in its own module with a `register(program)`. */
import { Command, CommanderError } from 'commander';
import { EXIT_USAGE } from './exit';
import { register as registerJournal } from './journal-inspect';
import { register as registerReplay } from './replay';
import { register as registerAdmin } from './admin';
import { register as registerKeygen } from './keygen';
import { register as registerSeed } from './seed';
import { register as registerWitness } from './witness';
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

registerReplay(program);
registerJournal(program);
registerSeed(program);
registerAdmin(program);
registerKeygen(program);
registerWitness(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`offsite: ${(e as Error).message}\n`);
  process.exit(1);
});
