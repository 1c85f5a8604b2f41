/**
 * Bad input against the real appliance (issue 6): a primary (iSCSI + HTTP) and a replica (iSCSI +
 * HTTP + replication listener), each the real `offsite serve` process. Round after round, every
 * listening port gets, in parallel: random bytes, a mutated valid opening (an iSCSI login and
 * commands, an HTTP GET, a replication Hello and segment), a connection that sends nothing, a
 * partial header that then stalls, a header declaring a huge length that then stalls, and a
 * 1 MiB flood; the replication port gets the same again inside a TLS session made with the link
 * key (past TLS, into the frame decoder). Stalled and silent connections stay open across rounds.
 *
 * After every round both processes are up and GET /status answers; at the end nothing was
 * logged at error level (what the appliance logs for an untyped exception), the resident set
 * of neither process grew by 64 MiB or more over the rounds (VmRSS from /proc/<pid>/status),
 * neither holds more sockets than before the rounds (its own /metrics), and a real initiator
 * still works: iscsi-inq and a qemu-io write + verified read on the primary's volume, iscsi-ls
 * discovery on the replica.
 *
 * The second test does the same to a witness with a key (`offsite witness --key-file`) and to an
 * appliance serving HTTPS (raw bytes against its TLS layer, and the same again inside TLS
 * sessions, into its HTTP parser): both stay up, the witness still grants a signed lease, and
 * HTTPS /status still answers.
 *
 * Rounds: PLAN 'ports/rounds' in test/helpers/fuzz.ts (OFFSITE_FUZZ_RUNS for a long run);
 * OFFSITE_FUZZ_SEED replays the same bytes.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { connectSecure, readLinkKey, type LinkKey } from '../../src/replication/link-security';
import { FrameType, PROTOCOL_VERSION, encodeFrame } from '../../src/replication/protocol';
import { encodeSegment } from '../../src/replication/segment';
import { requestLease } from '../../src/appliance/witness';
import { CLI, removeDir, startAppliance, tempDir, TARGET_PREFIX, type RunningAppliance } from '../helpers/appliance';
import { have, run } from '../helpers/exec';
import { rng } from '../helpers/fault-proxy';
import { LONG_RUN, mutate, mutationsArb, runsFor, timeoutFor, type Mutation } from '../helpers/fuzz';
import { cdb as CDB, frame, loginRequest, scsiCommand, textData, textRequest } from '../helpers/iscsi-wire';
import { freePort, startReplica, testLinkKey } from '../helpers/replication';
import { httpsRequest, selfSignedCert } from '../helpers/tls';
import { until } from '../helpers/wait';
import { startWitnessProcess } from '../helpers/witness';

type Kind = 'iscsi' | 'http' | 'repl';
interface Port {
  name: string;
  port: () => number;
  kind: Kind;
}

let dir: string;
let primary: RunningAppliance;
let replica: RunningAppliance;
let replPort: number;
/** The link key both the replica and this test hold (test/helpers/replication). */
let linkKey: LinkKey | undefined;
/** Silent and stalled connections, kept open across rounds. */
const held: net.Socket[] = [];

const PORTS: Port[] = [
  { name: 'primary iSCSI', port: () => primary.iscsiPort, kind: 'iscsi' },
  { name: 'primary HTTP', port: () => primary.httpPort, kind: 'http' },
  { name: 'replica iSCSI', port: () => replica.iscsiPort, kind: 'iscsi' },
  { name: 'replica HTTP', port: () => replica.httpPort, kind: 'http' },
  { name: 'replica replication', port: () => replPort, kind: 'repl' },
];

before(async () => {
  // Every connection here comes from 127.0.0.1, the real initiator's too: the login rate limit
  // (default 10 refused logins a minute, then the address is dropped for a minute) would block it
  // after the fuzzing's refused logins. This test is about surviving bad input, so lift the limit.
  process.env.OFFSITE_LOGIN_RATE_LIMIT = '1000000/60/1';
  dir = tempDir('offsite-fuzz-ports-');
  replPort = await freePort();
  linkKey = await readLinkKey(testLinkKey());
  [primary, replica] = await Promise.all([startAppliance({ dataDir: path.join(dir, 'primary'), volumes: ['vol1:64M'] }), startReplica(path.join(dir, 'replica'), replPort)]);
});

after(async () => {
  for (const s of held) s.destroy();
  await Promise.all([primary?.stop(), replica?.stop()]);
  if (dir) removeDir(dir);
});

// ---- What goes on the wire ------------------------------------------------------------------

const ISID = Buffer.from('80fa22000001', 'hex');

/** A valid opening: login (normal session on the primary's vol1, discovery elsewhere), then a command or two. */
function validIscsi(toPrimary: boolean): Buffer {
  const sec = textData({ InitiatorName: 'iqn.1994-05.com.example:fuzzer', ...(toPrimary ? { TargetName: `${TARGET_PREFIX}:vol1`, SessionType: 'Normal' } : { SessionType: 'Discovery' }), AuthMethod: 'None' });
  const op = textData({ HeaderDigest: 'None', DataDigest: 'None', MaxRecvDataSegmentLength: '65536', ImmediateData: 'Yes', InitialR2T: 'Yes' });
  const parts = [
    frame(loginRequest({ transit: true, csg: 0, nsg: 1, isid: ISID, itt: 1, cmdSN: 0, expStatSN: 0 }, sec.length), sec),
    frame(loginRequest({ transit: true, csg: 1, nsg: 3, isid: ISID, itt: 1, cmdSN: 0, expStatSN: 1 }, op.length), op),
  ];
  if (toPrimary) {
    parts.push(frame(scsiCommand({ itt: 2, edtl: 512, read: true, cmdSN: 0, expStatSN: 2, cdb: CDB.read10(0, 1) }, 0)));
    parts.push(frame(scsiCommand({ itt: 3, edtl: 96, read: true, cmdSN: 1, expStatSN: 2, cdb: CDB.inquiry(96) }, 0)));
  } else {
    const st = textData({ SendTargets: 'All' });
    parts.push(frame(textRequest({ itt: 2, cmdSN: 0, expStatSN: 2 }, st.length), st));
  }
  return Buffer.concat(parts);
}

const validHttp = (p: string) => Buffer.from(`GET ${p} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: fuzz\r\nConnection: close\r\n\r\n`);

function wire(type: FrameType, meta: Record<string, unknown>, payload?: Buffer): Buffer {
  const f = encodeFrame(type, meta, payload);
  return Buffer.concat([f.head, f.payload]);
}

/** A Hello that a fresh replica accepts (no volumes), a ping and a segment for a volume it does not have. */
function validRepl(): Buffer {
  const seg = encodeSegment([{ seq: 1, timeMs: Date.now(), volume: 'vol1', op: 'write', offsetBytes: 0, lengthBytes: 512, data: Buffer.alloc(512, 1) }]);
  return Buffer.concat([wire(FrameType.Hello, { version: PROTOCOL_VERSION, siteId: 'fuzz-primary', volumes: [] }), wire(FrameType.Ping, { id: 1 }), wire(FrameType.Segment, seg.meta, seg.payload)]);
}

function valid(p: Port, variant: number): Buffer {
  if (p.kind === 'iscsi') return validIscsi(p.name.startsWith('primary'));
  if (p.kind === 'http') return validHttp(['/status', '/metrics', '/healthz', '/nope'][variant % 4]);
  return validRepl();
}

/** Bytes of a header that declares far more than it sends. */
function hugeHeader(p: Port, variant: number): Buffer {
  if (p.kind === 'iscsi') {
    const b = Buffer.alloc(48);
    b[0] = 0x43; // Login Request
    b[1] = 0x81;
    const dlen = variant % 2 ? 0xffffff : 8000; // refused at once / within the login limit, then starved
    b[5] = dlen >>> 16;
    b[6] = (dlen >>> 8) & 0xff;
    b[7] = dlen & 0xff;
    b[4] = variant % 3 === 0 ? 255 : 0; // 1020 bytes of AHS
    return Buffer.concat([b, Buffer.alloc(100, 0x41)]);
  }
  if (p.kind === 'http') {
    // A body that never comes on a route that does not read it, or a header line far past the limit.
    return variant % 2 ? Buffer.from('POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\nabc') : Buffer.from(`GET /status HTTP/1.1\r\nHost: x\r\nX-Fill: ${'a'.repeat(100_000)}`);
  }
  const h = Buffer.from(wire(FrameType.Segment, {}));
  h.writeUInt32BE(variant % 2 ? 64 << 20 : 1 << 20, 12); // payload within the cap, never sent in full
  return Buffer.concat([h, Buffer.alloc(1024, 7)]);
}

interface RoundPlan {
  garbageBytes: number;
  mutations: Mutation[];
  cut: number;
  variant: number;
  noise: number;
}

const roundArb: fc.Arbitrary<RoundPlan> = fc.record({
  garbageBytes: fc.integer({ min: 1, max: 65536 }),
  mutations: mutationsArb(6),
  cut: fc.nat(),
  variant: fc.nat(),
  noise: fc.nat(),
});

/** `n` pseudo-random bytes from `seed` (fast; fast-check would build a 1 MiB array byte by byte). */
function noise(n: number, seed: number): Buffer {
  const next = rng(seed);
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4) {
    const v = Math.floor(next() * 2 ** 32);
    for (let k = 0; k < 4 && i + k < n; k++) b[i + k] = (v >>> (8 * k)) & 0xff;
  }
  return b;
}

// ---- Sending --------------------------------------------------------------------------------

/**
 * Connect, write `bytes`; `hold`: keep the socket open, else half-close and wait (bounded) for
 * the peer to close. `secure`: inside a TLS session, with the test link key (true: past the
 * replica's TLS layer, into its frame decoder) or as an HTTPS client ('https').
 */
function hit(port: number, bytes: Buffer, hold: boolean, secure: false | true | 'https' = false): Promise<void> {
  return new Promise((resolve) => {
    const s: net.Socket =
      secure === 'https' ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }) : secure ? connectSecure('127.0.0.1', port, linkKey!) : net.connect({ port, host: '127.0.0.1' });
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      if (!hold) s.destroy();
      finish();
    }, 3000);
    s.once('close', finish);
    s.once(secure ? 'secureConnect' : 'connect', () => {
      if (bytes.length) s.write(bytes);
      if (hold) {
        held.push(s);
        finish();
      } else {
        s.end();
      }
    });
  });
}

function rssMiB(app: RunningAppliance): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${app.proc.pid}/status`, 'utf8'));
  assert.ok(m, 'VmRSS readable');
  return Number(m[1]) / 1024;
}

async function alive(app: RunningAppliance, what: string): Promise<void> {
  assert.equal(app.proc.exitCode, null, `${what} exited (code ${app.proc.exitCode}, signal ${app.proc.signalCode})`);
  assert.equal(app.proc.signalCode, null, `${what} was killed by ${app.proc.signalCode}`);
  const st = await app.status();
  assert.ok(typeof st.role === 'string', `${what}: /status answers with JSON`);
}

/** Heap in use (MiB) and open sockets of an appliance, from its own /metrics. */
async function internals(app: RunningAppliance): Promise<{ heapMiB: number; sockets: number }> {
  const text = await (await fetch(`http://${app.host}:${app.httpPort}/metrics`)).text();
  const value = (prefix: string) => Number(text.split('\n').find((l) => l.startsWith(prefix))?.split(' ').pop() ?? NaN);
  return { heapMiB: value('offsite_nodejs_heap_size_used_bytes ') / (1 << 20), sockets: value('offsite_nodejs_active_handles{type="Socket"} ') };
}

const errorLogs = (app: RunningAppliance) => app.logs.filter((r) => Number(r.level) >= 50);

const ROUNDS = runsFor('ports/rounds');
const MAX_HELD = 400;

test(`${ROUNDS} rounds of garbage, mutated openings, silent, stalled, huge-length and flooding connections on every port: both appliances stay up, /status answers, RSS stays bounded, nothing is logged as an error, and a real initiator still works`, { timeout: timeoutFor('ports/rounds', 60_000, 120_000) }, async (t) => {
  const seed = process.env.OFFSITE_FUZZ_SEED ? Number(process.env.OFFSITE_FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
  const rss: Record<string, number[]> = { primary: [rssMiB(primary)], replica: [rssMiB(replica)] };
  const start = { primary: await internals(primary), replica: await internals(replica) };
  let connections = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const jobs: Promise<void>[] = [];
    for (const [i, p] of PORTS.entries()) {
      const [plan] = fc.sample(roundArb, { seed: seed + round * 31 + i, numRuns: 1 });
      const port = p.port();
      const ok = valid(p, plan.variant);
      let mutated = mutate(ok, plan.mutations);
      if (p.kind === 'repl' && plan.variant % 2) mutated = repairFirstCrc(mutated);
      const headerLen = p.kind === 'iscsi' ? 48 : p.kind === 'repl' ? 20 : ok.indexOf('\r\n\r\n');
      jobs.push(
        hit(port, noise(plan.garbageBytes, plan.noise), false),
        hit(port, mutated, false),
        hit(port, Buffer.alloc(0), true),
        hit(port, ok.subarray(0, 1 + (plan.cut % (headerLen - 1))), true),
        hit(port, hugeHeader(p, plan.variant), true),
        hit(port, noise(1 << 20, plan.noise + 1), false),
      );
      connections += 6;
      if (p.kind === 'repl') {
        // The same again inside an authenticated TLS session: what reaches the frame decoder.
        jobs.push(
          hit(port, noise(plan.garbageBytes, plan.noise + 2), false, true),
          // unmutated: a Hello announcing no volumes, then a segment for a volume it did not announce
          hit(port, ok, false, true),
          hit(port, mutated, false, true),
          hit(port, ok.subarray(0, 1 + (plan.cut % (headerLen - 1))), true, true),
          hit(port, hugeHeader(p, plan.variant), true, true),
        );
        connections += 5;
      }
    }
    await Promise.all(jobs);
    // Keep a few hundred idle connections open at any time (the oldest go): a long run must not hit our own file limit.
    while (held.length > MAX_HELD) held.shift()!.destroy();
    await alive(primary, `primary, round ${round}`);
    await alive(replica, `replica, round ${round}`);
    rss.primary.push(rssMiB(primary));
    rss.replica.push(rssMiB(replica));
  }
  // Hang up the held connections and let the appliances settle.
  for (const s of held.splice(0)) s.destroy();
  await new Promise((r) => setTimeout(r, 1000));
  await alive(primary, 'primary after the rounds');
  await alive(replica, 'replica after the rounds');
  rss.primary.push(rssMiB(primary));
  rss.replica.push(rssMiB(replica));

  const end = { primary: await internals(primary), replica: await internals(replica) };
  for (const [what, app] of [['primary', primary], ['replica', replica]] as const) {
    // Every connection of the rounds is gone on the appliance's side too.
    assert.ok(end[what].sockets <= start[what].sockets + 4, `${what} still holds ${end[what].sockets} sockets (${start[what].sockets} before the rounds)`);
    const errors = errorLogs(app);
    assert.deepEqual(errors, [], `${what} logged at error level: ${JSON.stringify(errors).slice(0, 2000)}`);
    // Growth from the first round on (start-up and first-connection allocations excluded).
    const series = rss[what];
    const growth = series[series.length - 1] - series[1];
    assert.ok(growth < 64, `${what} RSS grew by ${growth.toFixed(1)} MiB over ${ROUNDS} rounds (${series.map((v) => v.toFixed(0)).join(' → ')} MiB)`);
  }

  // A real initiator afterwards.
  assert.ok(have('iscsi-inq') && have('qemu-io') && have('iscsi-ls'), 'libiscsi-bin and qemu-utils are installed (make test installs them)');
  const inq = await run('iscsi-inq', [primary.url('vol1')], { timeoutMs: 30_000 });
  assert.equal(inq.code, 0, `iscsi-inq: ${inq.stderr}`);
  assert.match(inq.stdout, /OFFSITE/, 'INQUIRY vendor');
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 1M 1M', '-c', 'read -P 0x5c 1M 1M', primary.url('vol1')], { timeoutMs: 60_000 });
  assert.equal(io.code, 0, `qemu-io: ${io.stderr}`);
  assert.doesNotMatch(io.stdout + io.stderr, /fail|error/i, `qemu-io: ${io.stdout}${io.stderr}`);
  const ls = await run('iscsi-ls', ['-s', `iscsi://127.0.0.1:${replica.iscsiPort}`], { timeoutMs: 30_000 });
  assert.equal(ls.code, 0, `iscsi-ls on the replica: ${ls.stderr}`);

  const count = (app: RunningAppliance, msg: string) => app.logs.filter((r) => r.msg === msg).length;
  const seen = `primary: ${count(primary, 'login')} logins, ${count(primary, 'protocol error, dropping connection')} protocol errors, ${count(primary, 'login refused')} refused logins; replica: ${count(replica, 'replication frame rejected; dropping the connection')} replication frames rejected, ${count(replica, 'protocol error, dropping connection')} iSCSI protocol errors`;
  const fmt = (v: number[]) => `${v[0].toFixed(0)} → ${v[1].toFixed(0)} → ${v[v.length - 1].toFixed(0)} MiB`;
  t.diagnostic(`fuzz ports/rounds: ${connections} inputs (${ROUNDS} rounds × ${PORTS.length} ports × 6 connections + 5 over TLS to the replication port, ${ROUNDS * (PORTS.length * 3 + 2)} of them left open, up to ${MAX_HELD} at a time; seed ${seed}${LONG_RUN ? ', long run' : ''}); RSS primary ${fmt(rss.primary)}, replica ${fmt(rss.replica)}; heap in use primary ${start.primary.heapMiB.toFixed(0)} → ${end.primary.heapMiB.toFixed(0)} MiB, replica ${start.replica.heapMiB.toFixed(0)} → ${end.replica.heapMiB.toFixed(0)} MiB; sockets primary ${start.primary.sockets} → ${end.primary.sockets}, replica ${start.replica.sockets} → ${end.replica.sockets}; ${seen}`);
});

/** Recompute the CRC of the first frame (so a mutation past it reaches the replica's meta checks). */
function repairFirstCrc(b: Buffer): Buffer {
  if (b.length < 20) return b;
  const metaLen = b.readUInt32BE(8);
  const payloadLen = b.readUInt32BE(12);
  const end = 20 + metaLen + payloadLen;
  if (end > b.length) return b;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { crc32c } = require('@node-rs/crc32') as typeof import('@node-rs/crc32');
  const out = Buffer.from(b);
  let crc = crc32c(out.subarray(0, 16));
  crc = crc32c(out.subarray(20, end), crc);
  out.writeUInt32BE(crc >>> 0, 16);
  return out;
}

test(`${ROUNDS} rounds of the same against a witness with a key and an appliance serving HTTPS (raw, and inside TLS sessions): both stay up, the witness still grants a signed lease, HTTPS /status still answers, nothing is logged as an error`, { timeout: timeoutFor('ports/rounds', 60_000, 120_000) }, async (t) => {
  const seed = process.env.OFFSITE_FUZZ_SEED ? Number(process.env.OFFSITE_FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
  const wdir = tempDir('offsite-fuzz-witness-');
  const keyFile = path.join(wdir, 'witness.key');
  const kg = await run(process.execPath, [CLI, 'keygen', '--witness-key', keyFile]);
  assert.equal(kg.code, 0, kg.stderr);
  const key = Buffer.from(readFileSync(keyFile, 'utf8').trim());
  const cert = await selfSignedCert(wdir);
  const ca = readFileSync(cert.cert);
  const wport = await freePort();
  const witness = await startWitnessProcess(wport, ['--key-file', keyFile], { OFFSITE_WITNESS_LEASE_MS: '2000' });
  const wlogs = witness.logs;
  const web = await startAppliance({ dataDir: path.join(wdir, 'https'), volumes: ['v:1M'], args: ['--http-tls-cert', cert.cert, '--http-tls-key', cert.key] }).catch(async (e: unknown) => {
    await witness.stop();
    throw e;
  });
  try {
    const lease = (site: string) => requestLease(`127.0.0.1:${wport}`, site, 'primary', 5000, key);
    // It grants nothing during its first lease.
    await until('the witness to grant leases', async () => (await lease('fuzz-site'))?.granted === true, 15_000, 200);
    const signedBody = JSON.stringify({ siteId: 'fuzz-site', role: 'primary', timeMs: Date.now() });
    const validWitness = (variant: number) =>
      variant % 2 ? validHttp('/status') : Buffer.from(`POST /lease HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-offsite-mac: ${'0'.repeat(64)}\r\nContent-Length: ${signedBody.length}\r\nConnection: close\r\n\r\n${signedBody}`);
    const httpPort = { name: 'https', port: () => web.httpPort, kind: 'http' as Kind };
    let connections = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const [plan] = fc.sample(roundArb, { seed: seed + round * 31, numRuns: 1 });
      const jobs: Promise<void>[] = [];
      const battery = (port: number, ok: Buffer, huge: Buffer, secure: false | 'https') => {
        const headerLen = ok.indexOf('\r\n\r\n');
        jobs.push(
          hit(port, noise(plan.garbageBytes, plan.noise), false, secure),
          hit(port, mutate(ok, plan.mutations), false, secure),
          hit(port, Buffer.alloc(0), true, secure),
          hit(port, ok.subarray(0, 1 + (plan.cut % (headerLen - 1))), true, secure),
          hit(port, huge, true, secure),
          hit(port, noise(1 << 20, plan.noise + 1), false, secure),
        );
        connections += 6;
      };
      battery(wport, validWitness(plan.variant), hugeHeader(httpPort, plan.variant), false);
      // The HTTPS port: bytes against its TLS layer, then HTTP inside TLS.
      battery(web.httpPort, valid(httpPort, plan.variant), hugeHeader(httpPort, plan.variant), false);
      battery(web.httpPort, valid(httpPort, plan.variant), hugeHeader(httpPort, plan.variant), 'https');
      await Promise.all(jobs);
      while (held.length > MAX_HELD) held.shift()!.destroy();
      assert.equal(witness.proc.exitCode, null, `witness exited in round ${round}`);
      assert.ok((await lease('fuzz-site'))?.granted, `round ${round}: the witness grants a signed lease`);
      assert.equal(web.proc.exitCode, null, `HTTPS appliance exited in round ${round}`);
      assert.equal((await httpsRequest(`https://127.0.0.1:${web.httpPort}/status`, ca)).status, 200, `round ${round}: HTTPS /status`);
    }
    for (const s of held.splice(0)) s.destroy();
    const werrors = wlogs.filter((r) => Number(r.level) >= 50);
    assert.deepEqual(werrors, [], `the witness logged at error level: ${JSON.stringify(werrors).slice(0, 2000)}`);
    assert.deepEqual(errorLogs(web), [], `the HTTPS appliance logged at error level: ${JSON.stringify(errorLogs(web)).slice(0, 2000)}`);
    const refused = wlogs.filter((l) => String(l.msg).startsWith('witness: request refused')).length;
    const handshakes = web.logs.filter((l) => String(l.msg).startsWith('https: TLS handshake refused')).length;
    t.diagnostic(`fuzz ports/witness+https: ${connections} inputs (${ROUNDS} rounds, seed ${seed}); witness logged ${refused} refusals (at most one a second), the HTTPS appliance ${handshakes} refused handshakes`);
  } finally {
    await witness.stop();
    await web.stop();
    removeDir(wdir);
  }
});
