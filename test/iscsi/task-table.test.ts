/**
 * The session's task table behaves as a Map of initiator task tags for every sequence of adds,
 * replacements and removals a session makes (checked against a Map, with tags chosen to collide),
 * and refuses a task past its capacity.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { homeSlot, TaskTable } from '../../src/iscsi/task-table';

const CAPACITY = 16;

// Tags chosen to collide in a 16-task (32-slot) table: four per home slot for eight
// neighbouring homes, so that runs form, wrap past the end and need their entries moved back on
// removal; plus the ends of the 32-bit range.
const home = (tag: number) => homeSlot(tag, 27);
const colliding: number[] = [];
for (let tag = 0, seen = new Map<number, number>(); colliding.length < 32; tag++) {
  const h = home(tag);
  const wanted = h >= 28 || h <= 3; // homes 28..31 and 0..3: runs wrap around the table's end
  if (wanted && (seen.get(h) ?? 0) < 4) {
    seen.set(h, (seen.get(h) ?? 0) + 1);
    colliding.push(tag);
  }
}
const tagArb = fc.oneof(fc.constantFrom(...colliding), fc.constantFrom(0xffffffff, 0xfffffffe, 0x80000000, 0));
// Adds outweigh removals, so that the table runs near full, where runs are longest.
const opArb = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('set' as const), tag: tagArb, value: fc.integer() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), tag: tagArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('get' as const), tag: tagArb }) },
);

test('the task table agrees with a Map over random adds, replacements and removals', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 400 }), (ops) => {
      const table = new TaskTable<{ v: number }>(CAPACITY);
      const model = new Map<number, { v: number }>();
      for (const o of ops) {
        if (o.op === 'set') {
          if (!model.has(o.tag) && model.size >= CAPACITY) {
            assert.throws(() => table.set(o.tag, { v: o.value }), RangeError);
            continue;
          }
          const task = { v: o.value };
          table.set(o.tag, task);
          model.set(o.tag, task);
        } else if (o.op === 'delete') {
          assert.equal(table.delete(o.tag), model.delete(o.tag));
        } else {
          assert.equal(table.get(o.tag), model.get(o.tag));
          assert.equal(table.has(o.tag), model.has(o.tag));
        }
        assert.equal(table.size, model.size);
      }
      for (const [tag, task] of model) assert.equal(table.get(tag), task, `tag ${tag}`);
      assert.deepEqual(new Set(table.values()), new Set(model.values()));
    }),
    { numRuns: 500 },
  );
});

test('a full table refuses one task more, and takes it once one has gone', () => {
  const table = new TaskTable<number>(CAPACITY);
  for (let tag = 1; tag <= CAPACITY; tag++) table.set(tag * 1000, tag);
  assert.throws(() => table.set(7, 7), /task table full/);
  table.set(5000, 50); // replacing is not adding
  assert.equal(table.get(5000), 50);
  assert.ok(table.delete(3000));
  table.set(7, 7);
  assert.equal(table.size, CAPACITY);
  assert.equal(table.get(7), 7);
});

test('removing from a run that wraps past the end of the table keeps every later task findable', () => {
  const withHome = (h: number, skip = 0) => {
    for (let tag = 0, n = 0; ; tag++) if (home(tag) === h && n++ === skip) return tag;
  };
  const [a, b, c, d] = [withHome(30), withHome(31), withHome(0), withHome(30, 1)];
  const table = new TaskTable<string>(CAPACITY);
  table.set(a, 'a'); // slot 30
  table.set(b, 'b'); // slot 31
  table.set(c, 'c'); // slot 0, its home
  table.set(d, 'd'); // home 30, wraps to slot 1
  assert.ok(table.delete(a));
  assert.deepEqual([table.get(b), table.get(c), table.get(d), table.get(a)], ['b', 'c', 'd', undefined]);
  assert.ok(table.delete(b));
  assert.deepEqual([table.get(c), table.get(d)], ['c', 'd']);
});
