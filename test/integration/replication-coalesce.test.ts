/**
 * Coalescing end to end (issue 4's RPO control under a slow link, and issue 3's point-in-time
 * replay on a replica): a hot region overwritten far faster than the link carries it is shipped
 * in coalesced batches, and the replica still ends byte-identical. Its history then has points
 * the primary never had (inside a coalesced batch only the newest version of each block
 * arrived): `offsite replay` refuses them, a time inside a batch goes back to the point before
 * it, and every point it does offer equals the primary's replay of the same point.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { reconstruct } from '../../src/journal/point-in-time';
import { Journal } from '../../src/journal/wal';
import { CLI, removeDir, tempDir } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { assertSameVolume, COALESCING, freePort, hotOverwrites, metricValue, metrics, startPrimary, startReplica, waitCaughtUp } from '../helpers/replication';


test('coalesced batches: the replica ends equal, and replay on it offers only points the primary had', { timeout: 240_000 }, async () => {
  const dir = tempDir();
  const aDir = path.join(dir, 'a');
  const bDir = path.join(dir, 'b');
  const replPort = await freePort();
  const replica = await startReplica(bDir, replPort, COALESCING.replica);
  // 1 MB/s against ~20 MB of overwrites: the projected RPO passes half the 4 s target at once.
  const primary = await startPrimary(aDir, ['hot:8M'], replPort, COALESCING.primary);
  let stopped = false;
  try {
    await hotOverwrites(dir)(primary.url('hot'), 0, 320);
    await waitCaughtUp(primary, replica, 120_000);
    await assertSameVolume(primary, replica, 'hot', dir);
    const saved = metricValue(await metrics(primary), 'offsite_rpo_coalesced_bytes_saved_total');
    assert.ok(saved !== undefined && saved > 0, `nothing was coalesced (saved ${String(saved)})`);
    await primary.stop();
    await replica.stop();
    stopped = true;

    // Every point in the replica's window: refused inside a coalesced batch, else equal to the
    // primary's replay of it.
    const pj = await Journal.open({ dir: path.join(aDir, 'journal') });
    const rj = await Journal.open({ dir: path.join(bDir, 'journal') });
    let inside: { from: number; to: number } | undefined;
    /** The primary's time of the first write the replica's batch left out, and of every point. */
    let tInside = 0;
    const times = new Map<number, number>();
    let offered = 0;
    let refused = 0;
    try {
      const w = rj.window();
      assert.ok(w.toSeq - w.fromSeq >= 300, `the replica keeps history (window ${w.fromSeq}..${w.toSeq})`);
      const image = (root: string) => path.join(root, 'volumes', 'hot.img');
      for (let seq = w.fromSeq; seq <= w.toSeq; seq++) {
        const around = await rj.coalescedAround(seq);
        const rOut = path.join(dir, 'r.img');
        times.set(seq, pj.timeOf(seq) ?? 0);
        if (around) {
          if (!inside) {
            inside = around;
            tInside = pj.timeOf(around.from)!;
          }
          refused++;
          await assert.rejects(reconstruct({ journal: rj, volume: 'hot', sizeBytes: 8 << 20, imagePath: image(bDir), out: rOut, seq }), /lies inside a batch this replica received coalesced/);
          continue;
        }
        offered++;
        const pOut = path.join(dir, 'p.img');
        await reconstruct({ journal: pj, volume: 'hot', sizeBytes: 8 << 20, imagePath: image(aDir), out: pOut, seq });
        await reconstruct({ journal: rj, volume: 'hot', sizeBytes: 8 << 20, imagePath: image(bDir), out: rOut, seq });
        assert.ok(readFileSync(rOut).equals(readFileSync(pOut)), `replay of point ${seq}: the replica's differs from the primary's`);
      }
    } finally {
      await pj.close();
      await rj.close();
    }
    assert.ok(inside, 'no coalesced batch was marked on the replica');
    assert.ok(offered > 1, `only ${offered} points offered`);

    // The command says so, and a time inside the batch gives the point before it.
    let r = await run(process.execPath, [CLI, 'replay', '--data', bDir, '--volume', 'hot', '--seq', String(inside.to - 1), '--out', path.join(dir, 'x.img')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`sequences ${inside.from}\\.\\.${inside.to - 1} are states the primary never had; the nearest points are ${inside.from - 1} and ${inside.to}`));
    r = await run(process.execPath, [CLI, 'replay', '--data', bDir, '--volume', 'hot', '--seq', String(inside.to), '--out', path.join(dir, 'x.img')]);
    assert.equal(r.code, 0, r.stderr);
    // A time inside it: the point before the batch (or, when the batch's end was written in the
    // same millisecond, that end).
    r = await run(process.execPath, [CLI, 'replay', '--data', bDir, '--volume', 'hot', '--time', new Date(tInside).toISOString(), '--out', path.join(dir, 'x.img')]);
    assert.equal(r.code, 0, r.stderr);
    const s = Number(/to sequence (\d+)/.exec(r.stdout)?.[1]);
    assert.ok(s === inside.from - 1 || (s >= inside.to && times.get(s) === tInside), `replay --time inside the batch ${inside.from}..${inside.to} gave sequence ${s}`);
    const inspect = await run(process.execPath, [CLI, 'journal', 'inspect', '--data', bDir, '--json']);
    assert.equal(inspect.code, 0, inspect.stderr);
    const batches = (JSON.parse(inspect.stdout) as { coalescedBatches: { from: number; to: number }[] }).coalescedBatches;
    assert.ok(batches.some((b) => b.from === inside!.from && b.to === inside!.to), `journal inspect lists the batch ${inside.from}..${inside.to}: ${inspect.stdout}`);
    assert.equal(batches.reduce((n, b) => n + b.to - b.from, 0), refused, 'journal inspect counts every point replay refuses');
    const text = await run(process.execPath, [CLI, 'journal', 'inspect', '--data', bDir]);
    assert.match(text.stdout, new RegExp(`coalesced\\s+${batches.length} batches`));
  } finally {
    if (!stopped) {
      await primary.stop();
      await replica.stop();
    }
    removeDir(dir);
  }
});
