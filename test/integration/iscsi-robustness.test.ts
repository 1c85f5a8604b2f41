/**
 * The real appliance against a raw initiator (test/helpers/raw-initiator) doing what libiscsi
 * and qemu cannot: data digests on the wire and a corrupted one; garbage, truncated and
 * half-open connections, oversized data segments and bad opcodes while another session keeps
 * doing I/O; 100 commands in flight in one session; NOP-In pings and the drop of a silent
 * initiator; session reinstatement.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { rng } from '../helpers/fault-proxy';
import { removeDir, startAppliance, tempDir, TARGET_PREFIX, type RunningAppliance } from '../helpers/appliance';
import { run } from '../helpers/exec';
import { cdb as CDB, loginRequest, parseTextData, scsiCommand, textData, walkFrames } from '../helpers/iscsi-wire';
import { pattern, RawInitiator } from '../helpers/raw-initiator';

const TARGET = `${TARGET_PREFIX}:vol1`;
const KiB = 1024;
const initiator = (name: string) => `iqn.2026-11.dev.offsite.test:${name}`;

let app: RunningAppliance;
let dir: string;
const opened: RawInitiator[] = [];

before(async () => {
  dir = tempDir();
  app = await startAppliance({ dataDir: path.join(dir, 'data'), volumes: ['vol1:64M'] });
});

after(async () => {
  for (const i of opened) i.destroy();
  await app?.stop();
  if (dir) removeDir(dir);
});

async function session(name: string, opts: { isid?: Buffer; keys?: Record<string, string>; port?: number } = {}): Promise<RawInitiator> {
  const s = await RawInitiator.session(opts.port ?? app.iscsiPort, { initiatorName: initiator(name), targetName: TARGET, isid: opts.isid, keys: opts.keys });
  opened.push(s);
  return s;
}

async function connect(port = app.iscsiPort): Promise<RawInitiator> {
  const s = await RawInitiator.connect(port);
  opened.push(s);
  return s;
}

/** Log records after `mark` matching `pred`; waits up to `timeoutMs` for at least one. */
async function logged(a: RunningAppliance, mark: number, pred: (r: Record<string, unknown>) => boolean, timeoutMs = 3000): Promise<Record<string, unknown>[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = a.logs.slice(mark).filter(pred);
    if (found.length || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 25));
  }
}

const remoteOf = (s: RawInitiator) => `127.0.0.1:${s.socket.localPort}`;

/** A write that lands and reads back the same, on `s`. */
async function roundTrip(s: RawInitiator, lba: number, bytes: number, seed: number): Promise<void> {
  const data = pattern(bytes, seed);
  const w = await s.write10(lba, data);
  assert.equal(w.status, 0, `write status ${w.status}`);
  const r = await s.read10(lba, bytes / 512);
  assert.equal(r.status, 0);
  assert.ok(r.data.equals(data), `data read back at LBA ${lba} differs`);
}

test('DataDigest=CRC32C (and HeaderDigest): writes with immediate data and R2T/Data-Out, reads in many Data-In PDUs, every digest on the wire checked', async () => {
  const mark = app.logs.length;
  const s = await session('digests', { keys: { HeaderDigest: 'CRC32C', DataDigest: 'CRC32C', MaxRecvDataSegmentLength: '8192', FirstBurstLength: '16384' } });
  assert.equal(s.headerDigest, true);
  assert.equal(s.dataDigest, true);
  s.dataOutPduBytes = 8192;
  const data = pattern(256 * KiB, 77);
  const w = await s.write10(2048, data);
  assert.equal(w.status, 0);
  assert.ok(w.r2ts >= 1, 'the rest after the immediate data was solicited');
  assert.ok(w.dataOutPdus >= 20, `${w.dataOutPdus} Data-Out PDUs`);
  const r = await s.read10(2048, 512);
  assert.equal(r.status, 0);
  assert.ok(r.dataInPdus >= 32, `${r.dataInPdus} Data-In PDUs (the initiator takes 8 KiB at most)`);
  assert.ok(r.data.equals(data), 'data round-trips');
  // An odd-sized ping: padding and digests together, both ways.
  const echo = await s.ping(Buffer.from('thirteen-byte'));
  assert.equal(echo.data.toString(), 'thirteen-byte');

  // The target's side of the wire, walked independently: every PDU after login has a correct
  // header digest, and every one with data a correct data digest over data + padding.
  const frames = walkFrames(s.rxBytes(), { digestsFromFrame: s.rxDigestsFromFrame, headerDigest: true, dataDigest: true });
  const ffp = frames.slice(s.rxDigestsFromFrame);
  const withData = ffp.filter((f) => f.dataLength > 0);
  assert.ok(withData.length >= 33, `${withData.length} PDUs with data`);
  assert.ok(ffp.every((f) => f.headerDigestOk === true), 'header digests');
  assert.ok(withData.every((f) => f.dataDigestOk === true), 'data digests');
  assert.ok(withData.some((f) => f.dataLength % 4 !== 0), 'a padded data segment was among them');
  assert.equal(s.wireError, undefined);
  const login = (await logged(app, mark, (l) => l.msg === 'login' && l.initiator === initiator('digests')))[0];
  assert.equal(login?.dataDigest, true);
  assert.equal(login?.headerDigest, true);

  // Another initiator (qemu, no digests) sees the same bytes.
  const io = await run('qemu-io', ['-f', 'raw', '-c', `read -v ${2048 * 512} 16`, app.url('vol1')], { timeoutMs: 20_000 });
  assert.equal(io.code, 0, io.stderr);
  const first16 = data.subarray(0, 16).toString('hex').match(/../g)!.join(' ');
  assert.ok(io.stdout.includes(first16), `qemu-io read ${io.stdout}`);
  await s.logout();
});

test('a corrupted data digest: the command is not executed, the connection is dropped (or the PDU rejected) with a log line, the process and other sessions go on', async () => {
  const bystander = await session('bystander-dd');
  await roundTrip(bystander, 9000, 4096, 1);
  const s = await session('bad-data-digest', { keys: { DataDigest: 'CRC32C' } });
  assert.equal(s.dataDigest, true);
  const mark = app.logs.length;
  const lba = 9100;
  const original = await bystander.read10(lba, 8);
  const outcome = s.write10(lba, pattern(4096, 99), { badDataDigestOnImmediate: true }).then(
    (o) => ({ status: o.status, response: o.response }),
    (e: Error) => ({ error: e.message }),
  );
  // RFC 7143 §7.8: the PDU is discarded; at ErrorRecoveryLevel 0 the target may end the
  // connection (session recovery) or answer Reject (reason 0x02, data digest error).
  const closed = await s.closedWithin(3000);
  if (!closed) {
    const rej = await s.next((p) => p.hdr.opcode === 0x3f, 3000).catch(() => assert.fail('the bad data digest was neither rejected nor did it end the connection'));
    assert.equal(rej.hdr.reason, 0x02, 'Reject reason: data digest error');
  }
  const result = await Promise.race([outcome, new Promise((r) => setTimeout(() => r({ pending: true }), 1000))]);
  assert.ok(!('status' in (result as object)) || (result as { status: number }).status !== 0, `the write must not succeed: ${JSON.stringify(result)}`);
  const lines = await logged(app, mark, (l) => l.code === 'ISCSI_DATA_DIGEST');
  assert.equal(lines.length, 1, 'one log line names the data digest error');
  assert.equal(lines[0].initiator, initiator('bad-data-digest'));
  // The corrupted write never reached the volume.
  const afterRead = await bystander.read10(lba, 8);
  assert.ok(afterRead.data.equals(original.data), 'the block is unchanged');
  await roundTrip(bystander, 9000, 4096, 2);
  assert.equal(app.proc.exitCode, null);
});

test('faults on other connections (garbage, bad digests, truncated, oversized, bad opcodes) each get a log line and a drop or Reject, while a session doing I/O the whole time is unaffected', async () => {
  const bystander = await session('bystander');
  let stop = false;
  let rounds = 0;
  let ioError: unknown;
  const io = (async () => {
    try {
      while (!stop) {
        await roundTrip(bystander, 20_000 + (rounds % 16) * 128, 64 * KiB, rounds);
        rounds++;
      }
    } catch (e) {
      ioError = e;
    }
  })();
  const checkBystander = async (fault: string) => {
    assert.equal(ioError, undefined, `bystander I/O failed after ${fault}`);
    const roundsBefore = rounds;
    const deadline = Date.now() + 3000;
    while (rounds === roundsBefore && Date.now() < deadline && !ioError) await new Promise((r) => setTimeout(r, 10));
    assert.ok(rounds > roundsBefore, `bystander made progress after ${fault}`);
    const echo = await bystander.ping(Buffer.from(fault));
    assert.equal(echo.data.toString(), fault);
  };
  const dropped = async (s: RawInitiator, what: string, match: (l: Record<string, unknown>) => boolean, code: string | string[]) => {
    assert.equal(await s.closedWithin(3000), true, `${what}: the target closes the connection`);
    const line = (await logged(app, mark, (l) => l.msg === 'protocol error, dropping connection' && match(l)))[0];
    assert.ok(line, `${what}: logged`);
    assert.ok((Array.isArray(code) ? code : [code]).includes(String(line.code)), `${what}: code ${String(line.code)}`);
    await checkBystander(what);
  };
  let mark = app.logs.length;
  try {
    // 1. Garbage instead of a login (an HTTP request): dropped before anything is allocated for it.
    {
      mark = app.logs.length;
      const s = await connect();
      const remote = remoteOf(s);
      s.sendRaw(Buffer.from(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${app.iscsiPort}\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n`));
      await dropped(s, 'HTTP request', (l) => l.remote === remote, ['ISCSI_PDU_TOO_LARGE', 'ISCSI_PROTOCOL']);
    }
    // 2. Random garbage after a successful login.
    {
      mark = app.logs.length;
      const s = await session('garbage');
      const random = rng(7);
      s.sendRaw(Buffer.from(Array.from({ length: 4096 }, () => Math.floor(random() * 256))));
      await dropped(s, 'random bytes in full feature phase', (l) => l.initiator === initiator('garbage'), ['ISCSI_PDU_TOO_LARGE', 'ISCSI_PROTOCOL']);
    }
    // 3. A corrupted header digest.
    {
      mark = app.logs.length;
      const s = await session('bad-header-digest', { keys: { HeaderDigest: 'CRC32C' } });
      await s.ping();
      s.send(scsiCommand({ itt: s.allocItt(), edtl: 0, cmdSN: s.cmdSN, expStatSN: s.expStatSN, cdb: CDB.testUnitReady() }, 0), undefined, { badHeaderDigest: true });
      await dropped(s, 'bad header digest', (l) => l.initiator === initiator('bad-header-digest'), 'ISCSI_HEADER_DIGEST');
    }
    // 4. An oversized data segment: only the BHS is sent; the target drops without waiting for the data.
    {
      mark = app.logs.length;
      const s = await session('oversized');
      const hdr = scsiCommand({ itt: s.allocItt(), write: true, edtl: 8 * 1024 * 1024, cmdSN: s.cmdSN, expStatSN: s.expStatSN, cdb: CDB.write10(0, 16384) }, 0);
      hdr.writeUIntBE(262144 + 4, 5, 3); // more than the MaxRecvDataSegmentLength the target declared
      assert.equal(Number(s.targetMaxRecv), 262144);
      s.sendRaw(hdr);
      await dropped(s, 'oversized data segment', (l) => l.initiator === initiator('oversized'), 'ISCSI_PDU_TOO_LARGE');
    }
    // 5. A SCSI command before login (a bad opcode for the login phase).
    {
      mark = app.logs.length;
      const s = await connect();
      const remote = remoteOf(s);
      s.sendRaw(scsiCommand({ itt: 1, edtl: 0, cmdSN: 0, expStatSN: 0, cdb: CDB.testUnitReady() }, 0));
      await dropped(s, 'command before login', (l) => l.remote === remote, 'ISCSI_PROTOCOL');
    }
    // 6. Truncated PDU, then the initiator half-closes its side (FIN).
    {
      mark = app.logs.length;
      const s = await session('truncated');
      const hdr = scsiCommand({ itt: s.allocItt(), read: true, edtl: 512, cmdSN: s.cmdSN, expStatSN: s.expStatSN, cdb: CDB.read10(0, 1) }, 0);
      s.sendRaw(hdr.subarray(0, 30));
      s.socket.end();
      assert.equal(await s.closedWithin(3000), true, 'truncated: closed');
      const line = (await logged(app, mark, (l) => l.initiator === initiator('truncated') && l.level as number >= 40))[0];
      assert.ok(line, 'truncated: a warning names the partial PDU');
      assert.equal(line.pendingBytes, 30);
      await checkBystander('truncated PDU');
    }
    // 7. Unknown opcodes in full feature phase: Reject "command not supported" (RFC 7143 §11.17), the session goes on.
    {
      mark = app.logs.length;
      const s = await session('bad-opcode');
      for (const op of [0x1f, 0x0e, 0x3c]) {
        const bad = scsiCommand({ itt: s.allocItt(), edtl: 0, cmdSN: s.cmdSN, expStatSN: s.expStatSN, cdb: CDB.testUnitReady() }, 0);
        bad[0] = 0x40 | op;
        s.sendRaw(bad);
        const rej = await s.next((p) => p.hdr.opcode === 0x3f, 3000);
        assert.equal(rej.hdr.reason, 0x05, `opcode 0x${op.toString(16)}: command not supported`);
        assert.ok(rej.data.subarray(0, 48).equals(bad), 'the Reject carries the rejected header');
      }
      const lines = await logged(app, mark, (l) => l.msg === 'PDU rejected' && l.initiator === initiator('bad-opcode'));
      assert.ok(lines.length >= 1, 'rejects are logged');
      await roundTrip(s, 30_000, 4096, 5);
      await checkBystander('bad opcodes');
      // SNACK at ErrorRecoveryLevel 0: Reject with reason 0x03.
      const snack = Buffer.alloc(48);
      snack[0] = 0x10;
      snack[1] = 0x80;
      snack.writeUInt32BE(0xffffffff, 16);
      s.sendRaw(snack);
      assert.equal((await s.next((p) => p.hdr.opcode === 0x3f, 3000)).hdr.reason, 0x03);
      await s.ping();
    }
  } finally {
    stop = true;
    await io;
  }
  assert.equal(ioError, undefined);
  assert.ok(rounds >= 7, `bystander rounds: ${rounds}`);
  // Real initiators still get in and do I/O; the process never went down.
  const inq = await run('iscsi-inq', [app.url('vol1')], { timeoutMs: 20_000 });
  assert.equal(inq.code, 0, inq.stderr);
  const qio = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 40M 1M', '-c', 'read -P 0x66 40M 1M', app.url('vol1')], { timeoutMs: 20_000 });
  assert.equal(qio.code, 0, qio.stderr);
  assert.doesNotMatch(qio.stdout + qio.stderr, /verification failed|error/i);
  assert.equal(app.proc.exitCode, null);
});

test('a Login Response longer than 8192 bytes is continued with the C bit; the initiator collects it with empty Login Requests and logs in', async () => {
  const s = await connect();
  const unknown = Array.from({ length: 150 }, (_, i): [string, string] => [`X-com.example.${'u'.repeat(32)}${i}`, 'v']);
  const data = textData([['InitiatorName', initiator('continued')], ['TargetName', TARGET], ['SessionType', 'Normal'], ['AuthMethod', 'None'], ...unknown]);
  assert.ok(data.length <= 8192);
  const itt = s.allocItt();
  const req = (csg: number, nsg: number, body: Buffer) => {
    s.send(loginRequest({ transit: true, csg, nsg, isid: s.isid, itt, cmdSN: s.cmdSN, expStatSN: s.expStatSN }, body.length), body);
    return s.next((r) => r.hdr.opcode === 0x23);
  };
  let r = await req(0, 1, data);
  const pieces: Buffer[] = [];
  while (r.hdr.cont) {
    assert.equal(r.hdr.statusClass, 0);
    assert.equal(r.hdr.transit, false, 'C and T are never both set');
    assert.equal(r.data.length, 8192);
    pieces.push(r.data);
    s.expStatSN = (r.hdr.statSN + 1) >>> 0;
    r = await req(0, 1, Buffer.alloc(0));
  }
  assert.equal(r.hdr.statusClass, 0);
  assert.ok(r.hdr.transit && r.hdr.nsg === 1);
  pieces.push(r.data);
  assert.ok(pieces.length >= 2, `${pieces.length} Login Responses`);
  const answers = parseTextData(Buffer.concat(pieces));
  assert.deepEqual([...answers].filter(([k]) => k.startsWith('X-com.example.')), unknown.map(([k]) => [k, 'NotUnderstood']));
  s.expStatSN = (r.hdr.statSN + 1) >>> 0;
  r = await req(1, 3, textData([['MaxRecvDataSegmentLength', '65536'], ['ImmediateData', 'Yes']]));
  assert.equal(r.hdr.statusClass, 0);
  assert.ok(r.hdr.transit && r.hdr.nsg === 3, 'full feature phase');
  s.cmdSN = r.hdr.expCmdSN;
  s.expStatSN = (r.hdr.statSN + 1) >>> 0;
  await roundTrip(s, 4096, 4096, 77);
});

test('100 commands outstanding in one session: the CmdSN window admits them all and every one completes', async () => {
  const s = await session('deep-queue', { keys: { ImmediateData: 'Yes', FirstBurstLength: '65536' } });
  const window = ((s.maxCmdSN - s.expCmdSN) >>> 0) + 1;
  assert.ok(window >= 100, `the login opened a window of ${window} commands`);
  const N = 100;
  const base = 50_000;
  const writes = Array.from({ length: N }, (_, i) => s.write10(base + i * 8, pattern(4096, 1000 + i)));
  assert.equal(s.maxOutstanding, N, 'all sent before any answer');
  for (const [i, w] of (await Promise.all(writes)).entries()) assert.equal(w.status, 0, `write ${i}`);
  const reads = Array.from({ length: N }, (_, i) => s.read10(base + i * 8, 8));
  const results = await Promise.all(reads);
  for (const [i, r] of results.entries()) {
    assert.equal(r.status, 0, `read ${i}`);
    assert.ok(r.data.equals(pattern(4096, 1000 + i)), `read ${i} returns its own data`);
  }
  // Every command was taken: the window moved by 2N.
  assert.equal(s.expCmdSN, s.cmdSN);
  assert.equal(((s.maxCmdSN - s.expCmdSN) >>> 0) + 1, window, 'the window is open again');

  // A command beyond MaxCmdSN is not executed (RFC 7143 §4.2.2.1), one inside is.
  const mark = app.logs.length;
  const outside = scsiCommand({ itt: s.allocItt(), read: true, edtl: 512, cmdSN: (s.maxCmdSN + 1) >>> 0, expStatSN: s.expStatSN, cdb: CDB.read10(0, 1) }, 0);
  s.send(outside);
  const inside = await s.read10(base, 8);
  assert.equal(inside.status, 0);
  await assert.rejects(s.next((p) => p.hdr.itt === outside.readUInt32BE(16), 500));
  assert.equal((await logged(app, mark, (l) => l.msg === 'command outside the CmdSN window ignored')).length, 1);
  await s.logout();
});

test('session reinstatement: a second login with the same initiator name and ISID replaces the first session', async () => {
  const isid = Buffer.from([0x80, 0x00, 0x0a, 0x0b, 0x00, 0x07]);
  const first = await session('reinstate', { isid });
  await roundTrip(first, 60_000, 4096, 11);
  // Same name, another ISID: a separate I_T nexus that must not be touched.
  const sibling = await session('reinstate', { isid: Buffer.from([0x80, 0x00, 0x0a, 0x0b, 0x00, 0x08]) });
  const mark = app.logs.length;
  const second = await session('reinstate', { isid });
  assert.notEqual(second.tsih, first.tsih, 'a new session');
  assert.equal(await first.closedWithin(3000), true, 'the old session\'s connection is closed');
  const line = (await logged(app, mark, (l) => l.msg === 'session reinstated'))[0];
  assert.ok(line);
  assert.equal(line.oldTsih, first.tsih);
  assert.equal(line.tsih, second.tsih);
  assert.equal(line.initiator, initiator('reinstate'));
  const r = await second.read10(60_000, 8);
  assert.ok(r.data.equals(pattern(4096, 11)));
  assert.equal(sibling.isClosed, false);
  await roundTrip(sibling, 60_100, 4096, 12);
  assert.equal(app.proc.exitCode, null);
});

test('NOP-In: an idle initiator is pinged; one that never answers (or stopped mid-PDU) is dropped with a log line; a silent connection that never logs in times out', async () => {
  const nopDir = tempDir();
  const nopApp = await startAppliance({ dataDir: path.join(nopDir, 'data'), volumes: ['vol1:8M'], args: ['--nop-interval', '300ms', '--nop-timeout', '700ms'] });
  const conns: RawInitiator[] = [];
  let idle: net.Socket | undefined;
  try {
    const t0 = Date.now();
    // A connection that never sends a byte: the login timer (15 s) has to end it.
    idle = net.connect({ port: nopApp.iscsiPort, host: '127.0.0.1' });
    idle.on('error', () => undefined);
    const idleClosed = new Promise<number>((resolve) => idle!.once('close', () => resolve(Date.now() - t0)));
    await new Promise((r) => idle!.once('connect', r));
    const idleRemote = `127.0.0.1:${idle.localPort}`;

    const mk = async (name: string) => {
      const s = await RawInitiator.session(nopApp.iscsiPort, { initiatorName: initiator(name), targetName: TARGET });
      conns.push(s);
      return s;
    };
    const mark = nopApp.logs.length;
    const answering = await mk('nop-answers');
    const silent = await mk('nop-silent');
    silent.autoAnswerNop = false;
    const stuck = await mk('nop-stuck');
    stuck.autoAnswerNop = false;
    stuck.sendRaw(scsiCommand({ itt: stuck.allocItt(), read: true, edtl: 512, cmdSN: stuck.cmdSN, expStatSN: stuck.expStatSN, cdb: CDB.read10(0, 1) }, 0).subarray(0, 20));

    assert.equal(await silent.closedWithin(4000), true, 'the silent initiator is dropped');
    assert.equal(await stuck.closedWithin(4000), true, 'the initiator stuck in the middle of a PDU is dropped');
    for (const s of [silent, stuck]) {
      assert.ok(s.nopInPings.length >= 1, 'it was pinged first');
      const ping = s.nopInPings[0].hdr;
      assert.equal(ping.itt, 0xffffffff, 'a target-initiated NOP-In has ITT 0xffffffff');
      assert.notEqual(ping.ttt, 0xffffffff, 'and a TTT that asks for an answer');
      assert.equal(ping.statSN, s.expStatSN, 'StatSN is not advanced by a ping');
    }
    for (const name of ['nop-silent', 'nop-stuck']) {
      const line = (await logged(nopApp, mark, (l) => l.msg === 'initiator did not answer NOP-In, dropping connection' && l.initiator === initiator(name)))[0];
      assert.ok(line, `${name}: logged`);
      assert.equal(line.timeoutMs, 700);
    }
    // Meanwhile the initiator that answers stays: several pings, several answers, I/O works.
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(answering.isClosed, false);
    assert.ok(answering.nopInPings.length >= 3, `${answering.nopInPings.length} pings answered`);
    const ttts = new Set(answering.nopInPings.map((p) => p.hdr.ttt));
    assert.equal(ttts.size, answering.nopInPings.length, 'each ping has its own TTT');
    await roundTrip(answering, 100, 4096, 3);

    const ms = await idleClosed;
    assert.ok(ms >= 14_000 && ms < 20_000, `the idle pre-login connection closed after ${ms} ms`);
    assert.ok((await logged(nopApp, mark, (l) => l.msg === 'login timed out, dropping connection' && l.remote === idleRemote)).length === 1);
    assert.equal(answering.isClosed, false, 'still there after all that');
    await answering.logout();
  } finally {
    idle?.destroy();
    for (const c of conns) c.destroy();
    await nopApp.stop();
    removeDir(nopDir);
  }
});
