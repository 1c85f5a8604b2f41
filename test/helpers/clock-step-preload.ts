/**
 * Loaded into an appliance under test with `node --require` (NODE_OPTIONS): its wall clock
 * (Date.now) is shifted by the milliseconds in the file named by OFFSITE_TEST_CLOCK_FILE, read
 * again at every SIGUSR2 (and written back to `<file>.applied`), as a clock stepped by NTP or an operator would be. The monotonic clock
 * (performance.now) is left alone, as a step leaves it. Nothing is shifted without that variable.
 */
import { readFileSync, writeFileSync } from 'node:fs';

const file = process.env.OFFSITE_TEST_CLOCK_FILE;
if (file) {
  const real = Date.now.bind(Date);
  let shift = 0;
  Date.now = () => real() + shift;
  process.on('SIGUSR2', () => {
    shift = Number(readFileSync(file, 'utf8')) || 0;
    // Told back, so that a test knows the step took effect.
    writeFileSync(`${file}.applied`, String(shift));
  });
}
