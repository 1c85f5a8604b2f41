/** Bookmarks (src/journal/bookmarks.ts): named points kept in the journal, across restarts, capped. */
import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import { Bookmarks, MAX_BOOKMARKS } from '../../src/journal/bookmarks';
import { Journal } from '../../src/journal/wal';
import { removeDir, tempDir } from '../helpers/appliance';

test('bookmarks: taken, numbered, refused when misnamed or renamed to another point, kept across a restart, dropped after a point, at most MAX_BOOKMARKS', async () => {
  const dir = tempDir();
  let j = await Journal.open({ dir: path.join(dir, 'journal') });
  try {
    let b = await Bookmarks.load(j);
    assert.deepEqual(b.all(), []);
    const a = await b.add({ name: 'before-upgrade', seq: 10, timeMs: 1000 });
    assert.equal(a.id, 1);
    const c = await b.add({ name: 'nightly:2026-11-28', seq: 5, timeMs: 900 });
    assert.equal(c.id, 2);
    assert.deepEqual(b.all().map((x) => x.name), ['nightly:2026-11-28', 'before-upgrade'], 'by point');
    assert.deepEqual(await b.add({ name: 'before-upgrade', seq: 10, timeMs: 5 }), a, 'the same name for the same point changes nothing');
    await assert.rejects(b.add({ name: 'before-upgrade', seq: 11, timeMs: 1 }), (e: Error & { code?: string }) => e.code === 'BOOKMARK_EXISTS' && /already names sequence 10/.test(e.message));
    for (const bad of ['', '-x', 'a b', 'x'.repeat(65), 'é']) await assert.rejects(b.add({ name: bad, seq: 1, timeMs: 1 }), (e: Error & { code?: string }) => e.code === 'BOOKMARK_BAD_NAME', JSON.stringify(bad));
    assert.equal(b.nextAfter(4), 5);
    assert.equal(b.nextAfter(5), 10);
    assert.equal(b.nextAfter(10), undefined);
    assert.deepEqual(b.after(1).map((x) => x.name), ['nightly:2026-11-28']);
    // A replica keeps the primary's numbering.
    await b.add({ id: 7, name: 'from-primary', seq: 20, timeMs: 2000 });
    assert.equal(b.lastId(), 7);
    await j.close();
    j = await Journal.open({ dir: path.join(dir, 'journal') });
    b = await Bookmarks.load(j);
    assert.deepEqual(b.all().map((x) => [x.name, x.seq, x.id]), [['nightly:2026-11-28', 5, 2], ['before-upgrade', 10, 1], ['from-primary', 20, 7]]);
    assert.equal((await b.add({ name: 'next', seq: 21, timeMs: 1 })).id, 8, 'numbering goes on after a restart');
    assert.deepEqual((await b.dropAfter(10)).map((x) => x.name), ['from-primary', 'next']);
    b = await Bookmarks.load(j);
    assert.deepEqual(b.all().map((x) => x.name), ['nightly:2026-11-28', 'before-upgrade']);
    for (let i = 0; i < MAX_BOOKMARKS; i++) await b.add({ name: `m${i}`, seq: 100 + i, timeMs: i });
    assert.equal(b.all().length, MAX_BOOKMARKS);
    assert.equal(b.get('nightly:2026-11-28'), undefined, 'the oldest point goes first');
    assert.equal((await Bookmarks.load(j)).all().length, MAX_BOOKMARKS);
  } finally {
    await j.close();
    removeDir(dir);
  }
});

test('bookmarks: changes made at the same time (two pings carrying the same one, two operators) neither duplicate a bookmark nor share an id', async () => {
  const dir = tempDir();
  let j = await Journal.open({ dir: path.join(dir, 'journal') });
  try {
    const b = await Bookmarks.load(j);
    const kept = { id: 7, name: 'sent-twice', seq: 10, timeMs: 1 };
    await Promise.all([b.add(kept), b.add(kept), b.add({ ...kept, id: 8, name: 'other', seq: 20 })]);
    assert.deepEqual(b.all().map((x) => `${x.name}#${x.id}`), ['sent-twice#7', 'other#8']);
    const taken = await Promise.all([b.add({ name: 'x1', seq: 30, timeMs: 2 }), b.add({ name: 'x2', seq: 30, timeMs: 2 })]);
    assert.deepEqual(taken.map((x) => x.id), [9, 10], 'each gets its own id');
    // Replaced by name while another change runs: one bookmark of that name remains, at the new point.
    await Promise.all([b.dropNamed('sent-twice').then(() => b.add({ id: 11, name: 'sent-twice', seq: 40, timeMs: 3 })), b.dropAfter(35)]);
    await j.close();
    j = await Journal.open({ dir: path.join(dir, 'journal') });
    const again = await Bookmarks.load(j);
    assert.deepEqual(again.all().map((x) => `${x.name}@${x.seq}`).sort(), b.all().map((x) => `${x.name}@${x.seq}`).sort(), 'what is kept is what was held');
    assert.equal(again.all().filter((x) => x.name === 'sent-twice').length, 1);
  } finally {
    await j.close();
    removeDir(dir);
  }
});
