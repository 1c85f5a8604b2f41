/**
 * The journal's per-record bookkeeping columns agree with a plain array of records through any
 * mix of appends (with sequence gaps, as after a restart) and trims from the old end, across
 * the moves and growths of its columns.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { RecordSizes } from '../../src/journal/record-sizes';

interface Rec {
  seq: number;
  vol: number;
  bytes: number;
  timeMs: number;
  monoMs: number;
  cum: number;
}

test('RecordSizes matches an array model under appends, trims, lookups and clears', () => {
  const step = fc.oneof(
    fc.record({ kind: fc.constant('push' as const), n: fc.integer({ min: 1, max: 3000 }), gap: fc.integer({ min: 0, max: 5 }) }),
    fc.record({ kind: fc.constant('trim' as const), n: fc.integer({ min: 0, max: 4000 }) }),
    fc.record({ kind: fc.constant('clear' as const) }),
  );
  fc.assert(
    fc.property(fc.array(step, { maxLength: 30 }), (steps) => {
      const s = new RecordSizes();
      let model: Rec[] = [];
      let seq = 0;
      let cum = 0;
      for (const st of steps) {
        if (st.kind === 'push') {
          seq += st.gap;
          for (let k = 0; k < st.n; k++) {
            const r = { seq: ++seq, vol: seq % 7, bytes: (seq * 37) % 5000, timeMs: 1_700_000_000_000 + seq, monoMs: 1000 + seq / 3, cum: 0 };
            cum += r.bytes;
            r.cum = cum;
            model.push(r);
            s.push(r.seq, r.vol, r.bytes, r.timeMs, r.monoMs, r.cum);
          }
        } else if (st.kind === 'trim') {
          for (let k = 0; k < st.n && model.length; k++) {
            model.shift();
            s.shift();
          }
        } else {
          model = [];
          s.clear();
        }
        assert.equal(s.size, model.length);
        for (const i of [0, model.length >> 1, model.length - 1]) {
          if (i < 0 || i >= model.length) continue;
          const m = model[i];
          assert.deepEqual([s.seqAt(i), s.volAt(i), s.bytesAt(i), s.timeAt(i), s.monoAt(i), s.cumAt(i)], [m.seq, m.vol, m.bytes, m.timeMs, m.monoMs, m.cum]);
        }
        for (const probe of [0, seq - 1, seq, seq + 1, model[0]?.seq, (model[0]?.seq ?? 0) - 1, model[model.length >> 1]?.seq]) {
          if (probe === undefined) continue;
          assert.equal(s.find(probe), model.findIndex((m) => m.seq === probe), `find ${probe}`);
          const after = model.findIndex((m) => m.seq > probe);
          assert.equal(s.firstAfter(probe), after < 0 ? model.length : after, `firstAfter ${probe}`);
        }
      }
    }),
    { numRuns: 200 },
  );
});
