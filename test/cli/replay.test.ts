/** `offsite replay --out`: the image it writes holds the volume's data, so it is owner-only. */
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
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
