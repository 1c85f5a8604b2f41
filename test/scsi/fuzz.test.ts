import test from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import pino from 'pino';
import { LogCapture, fuzzing, timeoutFor } from '../helpers/fuzz';
import { A, B, harness } from '../helpers/scsi-harness';
import { parseSense } from '../../src/scsi/sense';
import type { ScsiResult } from '../../src/scsi/port';

// Structure-aware CDBs with valid parameter lists, mutated, and command sequences: test/fuzz/scsi.test.ts.
// Inputs per property: PLAN in test/helpers/fuzz.ts (OFFSITE_FUZZ_RUNS for a long run).

/** Every result is well formed: a known status; CHECK CONDITION has parseable sense; no data with errors; nothing logged as an error (an untyped failure). */
function assertWellFormed(r: ScsiResult, logs?: LogCapture): void {
  if (logs) assert.deepEqual(logs.errors(), [], 'error-level log: an untyped failure inside the target');
  assert.ok([0x00, 0x02, 0x04, 0x08, 0x18, 0x28].includes(r.status), `status ${r.status}`);
  if (r.status === 0x02) {
    assert.ok(r.sense && r.sense.length >= 8, 'sense present');
    const s = parseSense(r.sense);
    assert.ok(s.key > 0 && s.key < 16, `sense key ${s.key}`);
    assert.notEqual(s.key, 0x4, 'no HARDWARE ERROR: every failure of a random CDB is a defined error');
    assert.equal(r.dataIn, undefined);
  }
}

const interesting = fc.constantFrom(
  0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2e, 0x2f, 0x34, 0x35, 0x41, 0x42, 0x55, 0x56,
  0x57, 0x5a, 0x5e, 0x5f, 0x83, 0x84, 0x88, 0x89, 0x8a, 0x8b, 0x8e, 0x8f, 0x90, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa, 0xae, 0xaf,
);

test('random CDBs with random data-out never throw and always give a well-formed result', { timeout: timeoutFor('scsi/random-interesting', 5) }, async (t) => {
  const f = fuzzing(t, 'scsi/random-interesting');
  const logs = new LogCapture();
  const h = await harness({ sizeBytes: 1024 * 1024, extra: { logger: pino({ level: 'error' }, logs) } });
  await fc.assert(
    fc.asyncProperty(
      interesting,
      fc.uint8Array({ minLength: 15, maxLength: 15 }),
      fc.option(fc.uint8Array({ minLength: 0, maxLength: 2048 }), { nil: undefined }),
      fc.boolean(),
      fc.integer({ min: 0, max: 2 }),
      async (op, rest, data, otherNexus, lun) => {
        f.hit();
        const cdb = Buffer.concat([Buffer.from([op]), Buffer.from(rest)]);
        // keep transfer sizes small so the property runs fast
        const r = await h.run(cdb, { data: data ? Buffer.from(data) : undefined, nexus: otherNexus ? B : A, lun: lun === 2 ? 3 : 0 });
        assertWellFormed(r, logs);
      },
    ),
    f.params,
  );
  f.report();
});

test('fully random CDBs (any opcode, any length 6..32) never throw', { timeout: timeoutFor('scsi/random-any', 5) }, async (t) => {
  const f = fuzzing(t, 'scsi/random-any');
  const logs = new LogCapture();
  const h = await harness({ sizeBytes: 256 * 1024, extra: { logger: pino({ level: 'error' }, logs) } });
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 32 }), fc.option(fc.uint8Array({ maxLength: 600 }), { nil: undefined }), fc.constantFrom(0, 9), async (cdb, data, lun) => {
      f.hit();
      const r = await h.target.execute({
        nexus: A,
        lun,
        cdb: Buffer.from(cdb),
        taskTag: 0,
        taskAttribute: 1,
        expectedDataLength: data?.length ?? 4096,
        readFlag: !data,
        writeFlag: !!data,
        dataOut: data ? Buffer.from(data) : undefined,
      });
      assertWellFormed(r, logs);
    }),
    f.params,
  );
  f.report();
});
