/**
 * `offsite replay --out`: the image it writes holds the volume's data, so it is owner-only. A
 * journal record that fails its check stops the replay with a message naming it, and a non-zero
 * exit, without the journal being changed.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { CLI, removeDir, startAppliance, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';

test('replay writes its output image mode 600 whatever the umask', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  try {
    const app = await startAppliance({ dataDir: data, volumes: ['v:2M'], args: ['--journal-retain', '1h'] });
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x21 0 64k', app.url('v')]);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(await app.stop(), 0);
    // The latest state (a copy of the image file) and the state before the write (a new file
    // written from an empty volume).
    for (const [name, point] of [['latest.img', []], ['empty.img', ['--seq', '0']]] as [string, string[]][]) {
      const out = path.join(dir, name);
      const before = process.umask(0o022);
      let r;
      try {
        r = await run(process.execPath, [CLI, 'replay', '--data', data, '--volume', 'v', '--out', out, ...point]);
      } finally {
        process.umask(before);
      }
      assert.equal(r.code, 0, r.stderr);
      assert.equal((statSync(out).mode & 0o777).toString(8), '600', name);
    }
  } finally {
    removeDir(dir);
  }
});

test('replay from a data directory with a corrupt journal record fails with a message naming it, journal inspect --verify finds it, and neither changes a journal file', async () => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  try {
    const app = await startAppliance({ dataDir: data, volumes: ['v:2M'], args: ['--journal-retain', '1h'] });
    for (const [pattern, at] of [['0x21', '0'], ['0x22', '64k']]) {
      const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${at} 64k`, app.url('v')]);
      assert.equal(w.code, 0, w.stderr);
    }
    assert.equal(await app.stop(), 0);
    const inspect = () => run(process.execPath, [CLI, 'journal', 'inspect', '--data', data, '--verify', '--json']);
    const clean = await inspect();
    assert.equal(clean.code, 0, clean.stderr);
    assert.deepEqual((JSON.parse(clean.stdout) as { verified: unknown }).verified, { records: 2, bytes: 128 * 1024 });
    // One byte of the first write's data flipped in its segment file.
    const segDir = path.join(data, 'journal', 'segments');
    const files = readdirSync(segDir).filter((f) => /^\d+\.seg$/.test(f)).map((f) => path.join(segDir, f));
    const first = Buffer.alloc(64 * 1024, 0x21);
    const file = files.find((f) => readFileSync(f).includes(first));
    assert.ok(file, 'the first write is in a segment file');
    const bytes = readFileSync(file);
    bytes[bytes.indexOf(first) + 4096] ^= 0xff;
    writeFileSync(file, bytes);
    const before = files.map((f) => readFileSync(f));
    // The point right after the first write: replayed from the empty volume, through its record.
    const out = path.join(dir, 'one.img');
    const r = await run(process.execPath, [CLI, 'replay', '--data', data, '--volume', 'v', '--out', out, '--seq', '1']);
    assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
    assert.match(r.stderr, /^offsite replay: journal record 1 in \S+\.seg is corrupt \(checksum mismatch\).*\[JOURNAL_(DURABLE_RECORD_)?CORRUPT\]$/m);
    // journal inspect opens the journal without reading record 1 (before the checkpoint); --verify reads it.
    assert.equal((await run(process.execPath, [CLI, 'journal', 'inspect', '--data', data])).code, 0);
    const v = await inspect();
    assert.equal(v.code, 1, `exit code; stderr: ${v.stderr}`);
    assert.match(v.stderr, /^offsite journal inspect: journal record 1 in \S+\.seg is corrupt \(checksum mismatch\).*\[JOURNAL_CORRUPT\]$/m);
    assert.deepEqual(files.map((f) => readFileSync(f)), before, 'the journal is as it was');
  } finally {
    removeDir(dir);
  }
});
