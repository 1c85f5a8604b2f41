/**
 * Commands that talk to a running appliance over its HTTP API: `offsite status` (a human
 * summary of /status), `offsite promote`, `offsite demote`, `offsite bandwidth`, `offsite verify`,
 * `offsite pause`, `offsite resume`, `offsite resize`, `offsite add-volume`, `offsite rpo`.
 */
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import { ConfigError, OffsiteError } from '../common/errors';
import { parseDuration, parseHostPort, parseRate, parseSize } from '../common/units';
import { isRpoPolicy } from '../replication/rpo';
import type { VerifyStatus } from '../replication/verify';
import type { HistoryView } from '../appliance/appliance';
import { fail } from './exit';
import { checkPointOptions, seqNumber } from './args';

let tokenFile: string | undefined;
let caFile: string | undefined;

async function adminToken(): Promise<string | undefined> {
  if (tokenFile) return (await readFile(tokenFile, 'utf8')).trim();
  return process.env.OFFSITE_ADMIN_TOKEN || undefined;
}

/** `HOST:PORT` (plain HTTP), `http://HOST:PORT` or `https://HOST:PORT`. */
function parseApplianceUrl(text: string): { tls: boolean; host: string; port: number } {
  const m = /^(https?):\/\/(.*?)\/?$/i.exec(text);
  const hp = parseHostPort(m ? m[2] : text, '--http');
  return { tls: !!m && m[1].toLowerCase() === 'https', host: hp.host, port: hp.port };
}

async function call(address: string, method: 'GET' | 'POST', route: string, body?: unknown): Promise<Record<string, unknown>> {
  const { tls, host, port } = parseApplianceUrl(address);
  const token = method === 'POST' ? await adminToken() : undefined;
  const ca = caFile ?? (process.env.OFFSITE_CA || undefined);
  let caPem: Buffer | undefined;
  if (ca) {
    try {
      caPem = await readFile(ca);
    } catch (e) {
      throw new OffsiteError('USAGE', `--ca: cannot read ${ca}: ${(e as Error).message}`);
    }
  }
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string | number> = {};
  if (payload !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = Buffer.byteLength(payload);
  }
  if (token) headers.authorization = `Bearer ${token}`;
  const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const opts = { host, port, method, path: route, headers, timeout: 30_000 };
    const req = tls ? https.request({ ...opts, ca: caPem }) : http.request(opts);
    req.on('timeout', () => req.destroy(new Error('no answer in 30 s')));
    req.on('error', (e: Error & { code?: string }) => {
      const untrusted = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(e.code ?? '');
      let why = e.message;
      if (untrusted) why += ca ? ` (checked against ${ca})` : ' (give the certificate or its CA with --ca FILE or OFFSITE_CA)';
      else if (!tls && (e.code === 'ECONNRESET' || e.code === 'HPE_INVALID_CONSTANT')) why += ' (is it serving HTTPS? then give https://HOST:PORT)';
      else if (tls && e.code === 'EPROTO') why += ' (is it serving plain HTTP? then give HOST:PORT)';
      reject(new OffsiteError(untrusted ? 'HTTP_TLS' : 'HTTP_UNREACHABLE', `cannot reach the appliance at ${address}: ${why}`));
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.end(payload);
  });
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON: the status code speaks
  }
  if (status < 200 || status >= 300) throw new OffsiteError(String(json.code ?? `HTTP_${status}`), String(json.error ?? `HTTP ${status}`));
  return json;
}

/**
 * The history, one line per bucket. A bucket that wrote at least 4 times the median bucket
 * (and 1 MiB) is marked: a burst of overwrites is how ransomware encrypting a volume looks.
 */
function historyText(h: HistoryView): string {
  const w = h.window;
  const lines = [
    `${h.role}: retained sequences ${w.fromSeq}..${w.toSeq}${w.fromTime ? ` (${w.fromTime} .. ${w.toTime ?? '?'})` : ''}${h.base ? `; from the base: state after sequence ${h.base.seq}${h.base.time ? ` (${h.base.time})` : ''}` : ''}`,
  ];
  if (!h.buckets.length) {
    lines.push(w.fromSeq !== w.toSeq ? 'no records retained' : h.base ? 'no records retained: every one was folded into the base (none written within --journal-retain); only the latest state' : 'no history retained: only the latest state (configure --journal-retain to keep some)');
    return lines.join('\n') + '\n';
  }
  const sorted = h.buckets.map((b) => b.bytes).sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  lines.push(`${'from (primary time)'.padEnd(26)}${'sequences'.padEnd(20)}${'records'.padStart(9)}${'written'.padStart(12)}  ${'point'.padStart(8)}  volumes`);
  for (const b of h.buckets) {
    const burst = h.buckets.length >= 3 && b.bytes >= 4 * median && b.bytes >= 1 << 20 ? `  BURST: ${median ? `${Math.round(b.bytes / median)}x the median` : 'the others wrote nothing'}` : '';
    const vols = Object.entries(b.volumes).map(([v, n]) => `${v} ${bytes(n)}`).join(', ');
    const marks = b.bookmarks?.length ? `  bookmarks: ${b.bookmarks.join(', ')}` : '';
    lines.push(`${b.start.padEnd(26)}${`${b.firstSeq}..${b.lastSeq}`.padEnd(20)}${String(b.records).padStart(9)}${bytes(b.bytes).padStart(12)}  ${String(b.point).padStart(8)}  ${vols}${burst}${marks}`);
  }
  lines.push(`point: the latest state at the end of the line that replay --seq, test-failover --seq and promote --seq can give (${h.bucketSeconds} s per line)`);
  return lines.join('\n') + '\n';
}

const bytes = (n: unknown): string => {
  const v = Number(n ?? 0);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${x.toFixed(i ? 1 : 0)} ${units[i]}`;
};

const capText = (v: unknown): string => (Number(v) ? `${bytes(v)}/s` : 'none');

export function summarize(s: Record<string, unknown>): string {
  const lines: string[] = [];
  const vols = (s.volumes as { name: string; sizeBytes: number; readOnly: boolean }[]) ?? [];
  lines.push(`role:        ${String(s.role)}   site ${String(s.siteId)}`);
  lines.push(`iscsi:       ${String(s.iscsi)}`);
  lines.push(`volumes:     ${vols.map((v) => `${v.name} (${bytes(v.sizeBytes)}${v.readOnly ? ', read-only' : ''})`).join(', ') || 'none'}`);
  lines.push(`journal:     head ${String(s.headSeq)}`);
  const link = s.link as Record<string, unknown> | undefined;
  if (s.role === 'primary' && link) {
    const r = (s.replication ?? {}) as { rpo?: Record<string, unknown>; sync?: Record<string, unknown> };
    lines.push(`replica:     ${String(link.replica)} ${link.connected ? 'connected' : 'DISCONNECTED'} (${String(s.consistency)}), acked ${String(s.ackedSeq)}`);
    const paused = (s.replication as { paused?: { pausedAt: string; reason: string } | null } | undefined)?.paused;
    if (paused) lines.push(`shipping:    PAUSED since ${paused.pausedAt}${paused.reason ? ` (${paused.reason})` : ''}: writes are journaled, nothing is shipped; offsite resume ships again`);
    const rpoSet = r.rpo?.source === 'runtime' ? `; set at run time, configured ${String(r.rpo.configuredTargetSeconds)} s ${String(r.rpo.configuredPolicy)}` : '';
    lines.push(`rpo:         ${String(s.rpoSeconds)} s (${r.rpo?.targetSeconds ? `target ${String(r.rpo.targetSeconds)} s` : 'no target set'}, policy ${String(r.rpo?.policy)}${rpoSet}${r.rpo?.targetMissed ? ', MISSED' : ''}), backlog ${bytes(s.backlogBytes)}`);
    lines.push(`link:        ${bytes(link.bytesRaw)} raw, ${bytes(link.bytesWire)} on the wire, rtt ${String(link.rttMs)} ms, cap ${capText(link.maxBandwidthBytesPerSec)}${link.maxBandwidthSource === 'runtime' ? ` (set at run time; configured ${capText(link.configuredMaxBandwidthBytesPerSec)})` : ''}`);
    if (r.sync?.running) lines.push(`sync:        ${bytes(r.sync.remainingBytes)} of ${bytes(r.sync.totalBytes)} left`);
    const due = (s.replication as { repairDue?: { since: string; running: boolean; ranges: number | null; bytes: number | null } | null } | undefined)?.repairDue;
    if (due && !due.running) lines.push(`repair:      due since ${due.since} (unclean stop): ${due.bytes === null ? 'every volume' : `${bytes(due.bytes)} in ${String(due.ranges)} range${due.ranges === 1 ? '' : 's'} being written then`} to compare with the replica, once it is connected and not syncing`);
    const v = s.verify as VerifyView | undefined;
    if (v && v.state !== 'idle') lines.push(`verify:      ${verifyLine(v)}${v.trigger === 'schedule' ? ' (scheduled)' : v.trigger === 'unclean-stop' ? ' (repair after an unclean stop)' : ''}`);
    if (v?.scheduleEverySeconds) lines.push(`${v.state === 'idle' ? 'verify:      not run yet;' : '            '} every ${String(v.scheduleEverySeconds)} s; next ${v.state === 'running' ? 'after this one' : String(v.nextScheduledAt)}`);
  } else if (s.role === 'replica') {
    const cp = s.consistentPoint as { seq: number; primaryTime?: string } | null;
    lines.push(`state:       ${String(s.state)}; received ${String(s.receivedSeq)}, applied ${String(s.appliedSeq)}`);
    lines.push(`consistent:  ${cp ? `sequence ${cp.seq}${cp.primaryTime ? ` (primary time ${cp.primaryTime})` : cp.seq === 0 ? ' (nothing written yet)' : ''}` : 'not yet (syncing)'}`);
    const vf = s.verified as { comparedBytes: number; mismatchedChunks: number; repairedBytes: number } | undefined;
    if (vf?.comparedBytes) lines.push(`verified:    ${bytes(vf.comparedBytes)} compared with the primary since start, ${vf.mismatchedChunks ? `${vf.mismatchedChunks} chunks DIFFERED` : 'no difference'}${vf.repairedBytes ? `, ${bytes(vf.repairedBytes)} repaired` : ''}`);
    if (link) lines.push(`primary:     ${link.connected ? 'connected' : 'not connected'} ${String(link.primarySiteId ?? '')}${link.connected && link.primaryPaused ? ' (it has PAUSED shipping: this copy stays at its point until it resumes)' : ''}`);
    const tf = s.testFailover as { active: boolean; targets: string[]; point?: { seq: number; primaryTime?: string } } | undefined;
    if (tf?.active) lines.push(`test:        failover test running${tf.point ? `, copies as of sequence ${tf.point.seq}${tf.point.primaryTime ? ` (primary time ${tf.point.primaryTime})` : ''}` : ''}: ${tf.targets.join(', ')}`);
  } else lines.push('replica:     none configured');
  const w = s.witness as { address: string; authenticated?: boolean; fenced: boolean; reason: string; takenOver: boolean; reachable: boolean; quorum?: number; witnesses?: { address: string; vote: string }[] } | undefined;
  if (w) {
    const fence = w.fenced ? `FENCED (writes refused: ${w.reason})` : s.role === 'primary' ? 'writes accepted' : 'standing by';
    const votes = w.witnesses ?? [];
    const granted = votes.filter((v) => v.vote === 'granted').length;
    let reach: string;
    if (s.role !== 'primary') {
      // A replica asks only once its primary has been silent long enough.
      reach = votes.some((v) => v.vote !== 'none') ? `${granted} of ${votes.length} granted at the last request, ${String(w.quorum)} needed` : 'asked when the primary falls silent';
    } else {
      reach = w.reachable ? 'reachable' : 'UNREACHABLE';
      const missing = votes.filter((v) => v.vote !== 'granted').map((v) => `${v.address} ${v.vote === 'none' ? 'NO ANSWER' : 'refused'}`);
      if (votes.length > 1) reach += `: ${granted} of ${votes.length} granted, ${String(w.quorum)} needed${missing.length ? ` (${missing.join(', ')})` : ''}`;
    }
    lines.push(`witness:     ${w.address} ${reach}, ${w.authenticated ? 'authenticated' : 'NOT authenticated (no --witness-key)'}; ${fence}${w.takenOver ? '; taken over by another site' : ''}`);
  }
  const bm = s.bookmarks as { count: number; newest: { name: string; seq: number; time: string } | null } | undefined;
  if (bm?.count) lines.push(`bookmarks:   ${bm.count}, newest ${bm.newest!.name} at sequence ${bm.newest!.seq} (${bm.newest!.time})`);
  const pending = (s.pendingRemovals as { name: string; lastSeq: number }[] | undefined) ?? [];
  for (const p of pending) lines.push(`removing:    ${p.name}: the primary removed it; this copy is retired once every write up to sequence ${p.lastSeq} is applied here`);
  for (const r of (s.removedVolumes as { name: string; removedAt: string; movedTo: string }[] | undefined) ?? []) lines.push(`removed:     ${r.name} (${r.removedAt}): files in ${r.movedTo}`);
  return lines.join('\n') + '\n';
}

type VerifyView = VerifyStatus & { scheduleEverySeconds?: number; nextScheduledAt?: string };

function verifyLine(v: VerifyView): string {
  const pct = v.totalBytes ? Math.floor((100 * (v.checkedBytes + v.unverifiedBytes)) / v.totalBytes) : 100;
  const repaired = v.repair && v.mismatchedChunks ? (v.repairedChunks === v.mismatchedChunks ? ', all repaired' : `, ${v.repairedChunks} repaired, ${v.mismatchedChunks - v.repairedChunks} NOT`) : '';
  const one = v.mismatchedChunks === 1;
  const verb = v.repair && v.repairedChunks === v.mismatchedChunks ? 'differed' : one ? 'DIFFERS' : 'DIFFER';
  const diff = v.mismatchedChunks ? `${v.mismatchedChunks} chunk${one ? '' : 's'} ${verb} (${bytes(v.mismatchedBytes)}${repaired})` : 'no difference';
  const unverified = v.unverifiedBytes ? `, ${bytes(v.unverifiedBytes)} not compared (writes kept overtaking it)` : '';
  if (v.state === 'running') return `running, ${pct}% of ${bytes(v.totalBytes)}, ${diff} so far${unverified}${v.waitingForReplica ? ', waiting for the replica' : ''}`;
  if (v.state === 'failed') return `FAILED at ${String(v.finishedAt)}: ${String(v.error)}`;
  return `${v.state === 'stopped' ? `stopped at ${pct}%` : 'done'} ${String(v.finishedAt)}: ${bytes(v.checkedBytes)} compared, ${diff}${unverified}`;
}

/** `offsite verify --wait` exit codes: equal, differences, incomplete (stopped, or ranges not compared). */
export const EXIT_VERIFY_DIFFERENT = 3;
export const EXIT_VERIFY_INCOMPLETE = 4;

/** A read-only command: GET its route from `--http`, printed by `text` (or as it came with --json). */
function readCommand<O extends object = object>(program: Command, name: string, description: string, route: (opts: O) => string, text: (r: Record<string, unknown>) => string, configure?: (c: Command) => Command): void {
  const c = program
    .command(name)
    .description(description)
    .requiredOption('--http <[https://]host:port>', 'the appliance HTTP address')
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--json', 'print the raw JSON');
  (configure?.(c) ?? c).action(async (opts: O & { http: string; ca?: string; json?: boolean }) => {
    caFile = opts.ca;
    try {
      const r = await call(opts.http, 'GET', route(opts));
      process.stdout.write(opts.json ? JSON.stringify(r, null, 2) + '\n' : text(r));
    } catch (e) {
      fail(e, `offsite ${name}`);
    }
  });
}

export function register(program: Command): void {
  readCommand(program, 'status', "print a human summary of a running appliance's /status", () => '/status', summarize);
  program
    .command('bookmark')
    .argument('<name>', '1-64 characters: letters, digits, . _ : @ + -')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('on a primary: name the point right after every write acknowledged so far (e.g. while an application is quiesced); shipped to the replica, where test-failover, promote and replay take it with --bookmark')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .action(async (name: string, opts: { http: string; ca?: string; tokenFile?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        const r = await call(opts.http, 'POST', '/bookmarks', { name });
        process.stdout.write(`bookmark ${String(r.name)}: sequence ${String(r.seq)} (${String(r.time)})\n`);
      } catch (e) {
        fail(e, 'offsite bookmark');
      }
    });
  readCommand(program, 'bookmarks', "list a running appliance's bookmarks (primary or replica), and whether its history still holds each point", () => '/bookmarks', (r) => {
    const list = r.bookmarks as { name: string; seq: number; time: string; state: string }[];
    return list.length ? list.map((b) => `${b.name.padEnd(24)} sequence ${String(b.seq).padEnd(10)} ${b.time}  ${b.state}\n`).join('') : 'no bookmarks\n';
  });
  readCommand<{ bucket: string }>(
    program,
    'history',
    "what a running appliance's retained journal history holds, by time: when was what written, and the point to go back to (test-failover, promote, replay --seq); bursts of writes stand out",
    (o) => `/history?bucket=${parseDuration(o.bucket, 'bucket') / 1000}`,
    (h) => historyText(h as unknown as HistoryView),
    (c) => c.option('--bucket <duration>', 'length of each line, e.g. 10s, 1m, 1h', '1m'),
  );
  program
    .command('promote')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('make a replica the primary: volumes writable at its last consistent point (refused while syncing or while the primary is connected, unless --force)')
    .requiredOption('--http <[https://]host:port>', "the replica's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--force', 'promote even while the replica is syncing (its volumes may be inconsistent) or its primary is connected (two sites then accept writes)')
    .option('--replicate-to <host:port>', 'ship to this replica once promoted (e.g. the old primary, demoted)')
    .option('--seq <n>', "promote at this earlier point of the replica's retained history (--journal-retain): the volumes go back to the state right after it; what came later is saved aside", seqNumber)
    .option('--time <iso8601>', 'promote at the state of this moment (the last write at or before it); as --seq')
    .option('--bookmark <name>', 'promote at this bookmark (offsite bookmark on the primary); as --seq')
    .action(async (opts: { http: string; ca?: string; force?: boolean; replicateTo?: string; tokenFile?: string; seq?: number; time?: string; bookmark?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        checkPointOptions(opts);
        const r = await call(opts.http, 'POST', '/promote', { force: !!opts.force, replicateTo: opts.replicateTo, seq: opts.seq, time: opts.time, bookmark: opts.bookmark });
        const back = r.wentBackFrom !== undefined ? `; went back from sequence ${String(r.wentBackFrom)} (${String(r.blocksRewritten)} blocks rewritten): the later writes are saved aside in ${String(r.savedTo)}` : '';
        process.stdout.write(`promoted in ${String(r.ms)} ms: writable at sequence ${String(r.seq)}${r.primaryTime ? ` (primary time ${String(r.primaryTime)})` : ''}${back}\n`);
      } catch (e) {
        fail(e, 'offsite promote');
      }
    });
  program
    .command('demote')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('turn a primary into a replica of the new primary; writes it took after the split are saved aside for offsite replay')
    .requiredOption('--http <[https://]host:port>', "the (old) primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .requiredOption('--replication-listen <host:port>', 'where the new primary will connect (its --replicate-to)')
    .action(async (opts: { http: string; ca?: string; replicationListen: string; tokenFile?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        // Checked here: a bad address is a usage error before the appliance stops being a primary.
        parseHostPort(opts.replicationListen, '--replication-listen');
        const listen = opts.replicationListen;
        const r = await call(opts.http, 'POST', '/demote', { replicationListen: listen });
        process.stdout.write(`demoted in ${String(r.ms)} ms: now a replica listening on ${listen}\n`);
      } catch (e) {
        fail(e, 'offsite demote');
      }
    });
  program
    .command('replicate-to')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('point a running primary at a (new) replica, e.g. after an automatic takeover; --none stops replicating')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .argument('[host:port]', "the replica's replication address (its --replication-listen)")
    .option('--none', 'stop replicating')
    .action(async (to: string | undefined, opts: { http: string; ca?: string; none?: boolean; tokenFile?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        if (!to && !opts.none) throw new OffsiteError('USAGE', 'give the replica address, or --none');
        await call(opts.http, 'POST', '/replicate-to', { replicateTo: opts.none ? null : to });
        process.stdout.write(opts.none ? 'no longer replicating\n' : `now replicating to ${String(to)}\n`);
      } catch (e) {
        fail(e, 'offsite replicate-to');
      }
    });
  program
    .command('test-failover')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('on a replica: serve writable throw-away copies of its volumes (<target>-test) while replication continues; --stop discards them')
    .requiredOption('--http <[https://]host:port>', "the replica's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--stop', 'end the test failover and discard the copies')
    .option('--seq <n>', "copies as the volumes were right after this sequence number (the replica's retained history: --journal-retain)", seqNumber)
    .option('--time <iso8601>', 'copies as the volumes were at this moment (the last write at or before it)')
    .option('--bookmark <name>', 'copies as the volumes were at this bookmark (offsite bookmark on the primary)')
    .action(async (opts: { http: string; ca?: string; stop?: boolean; tokenFile?: string; seq?: number; time?: string; bookmark?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        checkPointOptions(opts);
        if (opts.stop && (opts.seq !== undefined || opts.time !== undefined || opts.bookmark !== undefined)) throw new OffsiteError('USAGE', '--seq, --time and --bookmark go with starting a test, not with --stop');
        const r = await call(opts.http, 'POST', '/test-failover', { action: opts.stop ? 'stop' : 'start', seq: opts.seq, time: opts.time, bookmark: opts.bookmark });
        const targets = (r.targets as string[]) ?? [];
        const point = r.point as { seq: number; primaryTime?: string } | undefined;
        const at = point ? ` (as of sequence ${point.seq}${point.primaryTime ? `, ${point.primaryTime}` : ''})` : '';
        process.stdout.write(opts.stop ? `test failover ended; discarded ${targets.join(', ') || 'nothing'}\n` : `test failover running; writable copies${at}: ${targets.join(', ')}\n`);
      } catch (e) {
        fail(e, 'offsite test-failover');
      }
    });
  program
    .command('bandwidth')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('change the replication bandwidth cap of a running primary (kept across restarts until the configured cap changes, or --reset)')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--reset', 'return to the configured cap (--max-bandwidth, the file or OFFSITE_MAX_BANDWIDTH)')
    .argument('[rate]', 'e.g. 10MB/s, 100Mbit, unlimited')
    .action(async (rate: string | undefined, opts: { http: string; ca?: string; tokenFile?: string; reset?: boolean }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        if ((rate === undefined) === !opts.reset) throw new ConfigError('give a rate (e.g. 10MB/s, unlimited) or --reset, not both');
        if (rate !== undefined) parseRate(rate, 'rate');
        const r = await call(opts.http, 'POST', '/bandwidth', opts.reset ? { reset: true } : { rate });
        const cap = Number(r.maxBandwidthBytesPerSec) ? `${String(r.maxBandwidthBytesPerSec)} bytes/s` : 'unlimited';
        process.stdout.write(`replication bandwidth cap: ${cap}${r.source === 'configured' ? ' (the configured cap)' : r.saved ? ' (saved: kept across restarts until the configured cap changes; --reset returns to it)' : ''}\n`);
      } catch (e) {
        fail(e, 'offsite bandwidth');
      }
    });
  const pauseLine = (r: Record<string, unknown>): string => {
    const p = r.paused as { pausedAt: string; reason: string } | null;
    const waiting = Number(r.headSeq) > Number(r.ackedSeq);
    const backlog = waiting ? `backlog ${bytes(r.backlogBytes)} (sequences ${Number(r.ackedSeq) + 1}..${String(r.headSeq)} not at the replica), rpo ${String(r.rpoSeconds)} s` : 'the replica has every write so far';
    if (p) return `${r.changed ? 'replication paused' : 'replication was already paused'} since ${p.pausedAt}${p.reason ? ` (${p.reason})` : ''}: writes are journaled, nothing is shipped (kept across restarts); ${backlog}; offsite resume ships again\n`;
    if (!r.changed) return `replication was not paused; ${waiting ? backlog : 'nothing waiting'}\n`;
    return waiting ? `replication resumed: shipping the backlog; ${backlog}\n` : 'replication resumed; nothing was waiting\n';
  };
  program
    .command('pause')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('stop shipping to the replica (e.g. for a WAN maintenance window): the link stays up, writes are journaled (under --journal-max, as when the link is down), kept across restarts until offsite resume')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--reason <text>', 'shown in /status, offsite status and the log')
    .action(async (opts: { http: string; ca?: string; tokenFile?: string; reason?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        process.stdout.write(pauseLine(await call(opts.http, 'POST', '/pause', opts.reason === undefined ? {} : { reason: opts.reason })));
      } catch (e) {
        fail(e, 'offsite pause');
      }
    });
  program
    .command('resume')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('ship again after offsite pause, from where it stopped')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .action(async (opts: { http: string; ca?: string; tokenFile?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        process.stdout.write(pauseLine(await call(opts.http, 'POST', '/resume', {})));
      } catch (e) {
        fail(e, 'offsite resume');
      }
    });
  program
    .command('resize')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description("grow a volume of a running primary, online (never shrink): initiators are told the new capacity, and the replica's copy grows with it")
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .argument('<volume>', 'the volume name')
    .argument('<size>', 'the new size, e.g. 2G, 1536MiB (a multiple of 512 bytes, not smaller than now)')
    .action(async (volume: string, size: string, opts: { http: string; ca?: string; tokenFile?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        const sizeBytes = parseSize(size, 'size');
        const r = await call(opts.http, 'POST', '/resize', { volume, sizeBytes });
        process.stdout.write(r.changed ? `volume ${volume} grown: ${bytes(r.previousSizeBytes)} → ${bytes(r.sizeBytes)} (${String(r.sizeBytes)} bytes); initiators are told (CAPACITY DATA HAS CHANGED), the replica's copy follows\n` : `volume ${volume} is already ${bytes(r.sizeBytes)} (${String(r.sizeBytes)} bytes): nothing to do\n`);
      } catch (e) {
        fail(e, 'offsite resize');
      }
    });
  program
    .command('add-volume')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('add a volume to a running primary: created empty, served as its own target at once, kept across restarts; the replica creates its copy')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .argument('<name>', 'the volume name (a-z, 0-9, . _ -)')
    .argument('<size>', 'its size, e.g. 10G (a multiple of 512 bytes)')
    .action(async (name: string, size: string, opts: { http: string; ca?: string; tokenFile?: string }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        const sizeBytes = parseSize(size, 'size');
        const r = await call(opts.http, 'POST', '/volumes', { name, sizeBytes });
        process.stdout.write(`volume ${name} added: ${bytes(r.sizeBytes)} (${String(r.sizeBytes)} bytes), served as ${String(r.targetName)}; kept across restarts, and the replica creates its copy\n`);
      } catch (e) {
        fail(e, 'offsite add-volume');
      }
    });
  program
    .command('remove-volume')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description("remove a volume from a running primary: no longer served, its files moved aside (never deleted); the replica retires its copy once it has every write of it")
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--force', 'end the sessions of initiators logged in to it (otherwise refused while any is)')
    .argument('<name>', 'the volume name')
    .action(async (name: string, opts: { http: string; ca?: string; tokenFile?: string; force?: boolean }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        const r = await call(opts.http, 'POST', '/volumes/remove', { name, force: !!opts.force });
        const ended = Number(r.sessionsEnded) ? `; ${String(r.sessionsEnded)} session(s) ended` : '';
        const replica = r.replicated ? `; the replica retires its copy once it has every write up to sequence ${String(r.lastSeq)}` : '';
        process.stdout.write(`volume ${name} removed: ${String(r.targetName)} is no longer served${ended}; its files (${bytes(r.sizeBytes)}) are in ${String(r.movedTo)}, to delete when no longer needed${replica}\n`);
      } catch (e) {
        fail(e, 'offsite remove-volume');
      }
    });
  program
    .command('rpo')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description('change the RPO target and/or policy of a running primary (kept across restarts until the configured ones change, or --reset)')
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--target <duration>', 'e.g. 30s, 5m; 0: no target')
    .option('--policy <policy>', 'coalesce, throttle or alert')
    .option('--reset', 'return to the configured target and policy')
    .action(async (opts: { http: string; ca?: string; tokenFile?: string; target?: string; policy?: string; reset?: boolean }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        const given = opts.target !== undefined || opts.policy !== undefined;
        if (given === !!opts.reset) throw new ConfigError('give --target and/or --policy, or --reset, not both');
        if (opts.target !== undefined) parseDuration(opts.target, '--target');
        if (opts.policy !== undefined && !isRpoPolicy(opts.policy)) throw new ConfigError(`--policy: '${opts.policy}' must be coalesce, throttle or alert`);
        const r = await call(opts.http, 'POST', '/rpo', opts.reset ? { reset: true } : { target: opts.target, policy: opts.policy });
        process.stdout.write(`RPO target ${String(r.targetSeconds)} s, policy ${String(r.policy)}${r.source === 'configured' ? ' (the configured ones)' : ` (saved: kept across restarts until the configured ones change, configured ${String(r.configuredTargetSeconds)} s ${String(r.configuredPolicy)}; --reset returns to them)`}\n`);
      } catch (e) {
        fail(e, 'offsite rpo');
      }
    });
  program
    .command('verify')
    .option('--token-file <file>', 'admin API token (default: OFFSITE_ADMIN_TOKEN)')
    .description("compare a running primary's volumes with its replica's, online (writes and replication go on); reports the 64 KiB chunks that differ")
    .requiredOption('--http <[https://]host:port>', "the primary's HTTP address")
    .option('--ca <file>', 'for https://: the PEM certificate (or its CA) to trust (default: OFFSITE_CA, else the system CAs)')
    .option('--volume <name>', 'only this volume (repeat for several; default: all)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--rate <rate>', 'read at most this much per second on each site (e.g. 50MB/s; default: no cap)')
    .option('--repair', "overwrite each chunk that differs with the primary's data, at the same point of the stream")
    .option('--wait', 'wait for the end and print the result; exit 0 equal (or all differences repaired), 3 chunks differ, 4 incomplete, 1 failed')
    .option('--stop', 'stop the running verify')
    .action(async (opts: { http: string; ca?: string; tokenFile?: string; volume?: string[]; rate?: string; wait?: boolean; stop?: boolean; repair?: boolean }) => {
      caFile = opts.ca;
      tokenFile = opts.tokenFile;
      try {
        if (opts.stop && (opts.volume || opts.rate || opts.repair)) throw new ConfigError('--stop takes no --volume, --rate or --repair');
        if (opts.rate !== undefined) parseRate(opts.rate, '--rate');
        let v = (await call(opts.http, 'POST', '/verify', opts.stop ? { stop: true } : { volumes: opts.volume ?? [], rate: opts.rate, repair: opts.repair === true })) as unknown as VerifyView;
        if (!opts.wait) {
          process.stdout.write(opts.stop ? `verify ${verifyLine(v)}\n` : `verify started: ${v.volumes.join(', ')} (${bytes(v.totalBytes)}); follow it with offsite status, or --wait\n`);
          return;
        }
        const bar = process.stderr.isTTY && v.state === 'running' ? new SingleBar({ format: 'verify |{bar}| {percentage}% {done}/{size}', stream: process.stderr }) : undefined;
        bar?.start(v.totalBytes, 0, { done: bytes(0), size: bytes(v.totalBytes) });
        while (v.state === 'running') {
          await new Promise((r) => setTimeout(r, 500));
          v = (await call(opts.http, 'GET', '/status')).verify as VerifyView;
          if (!v) throw new OffsiteError('NOT_REPLICATING', 'the appliance no longer replicates (restarted in another role?)');
          const done = v.checkedBytes + v.unverifiedBytes;
          bar?.update(done, { done: bytes(done), size: bytes(v.totalBytes) });
        }
        bar?.stop();
        process.stdout.write(`verify ${verifyLine(v)}\n`);
        for (const m of v.mismatches) process.stdout.write(`  ${v.repair ? 'differed' : 'differs'}: ${m.volume} bytes ${m.offsetBytes}..${m.offsetBytes + m.lengthBytes - 1} (${bytes(m.lengthBytes)})\n`);
        if (v.state === 'failed') process.exit(1);
        if (v.mismatchedChunks > v.repairedChunks) process.exit(EXIT_VERIFY_DIFFERENT);
        if (v.state !== 'done' || v.unverifiedBytes > 0) process.exit(EXIT_VERIFY_INCOMPLETE);
      } catch (e) {
        fail(e, 'offsite verify');
      }
    });
}
