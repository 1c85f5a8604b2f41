/**
 * The Prometheus registry: prom-client metrics named offsite_*. Most are filled at scrape time
 * from the stats objects the lower layers keep (they never import prom-client); command
 * latencies arrive through the appliance's hooks as they happen. Metric names are a contract
 * with dashboards, alert rules and operators' scripts: add freely, never rename.
 */
import client from 'prom-client';
import type { Appliance, ApplianceHooks } from '../appliance/appliance';
import { poolStats } from '../common/buffer-pool';
import type { RunningWitness, WitnessStats } from '../appliance/witness';

export interface Metrics {
  registry: client.Registry;
  /** Pass to Appliance.start. */
  hooks: ApplianceHooks;
  /** Start reporting this appliance's state. */
  attach(app: Appliance): void;
}

/** Coarse classes for latency histograms (one series per class, not per opcode). */
function opClass(op: string): string {
  if (op.startsWith('READ_') && op !== 'READ_CAPACITY_10' && op !== 'READ_CAPACITY_16') return 'read';
  if (op.startsWith('WRITE') || op === 'COMPARE_AND_WRITE' || op === 'ORWRITE' || op === 'UNMAP') return 'write';
  if (op.startsWith('SYNCHRONIZE_CACHE')) return 'flush';
  return 'other';
}

const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** One sample line of the exposition, as prom-client's registry reads it from a metric's get(). */
interface SampleValue {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

/** One histogram series: counts per bucket (not cumulative; the last one is +Inf), sum, count. */
interface LatencySeries {
  volume: string;
  class: string;
  counts: Float64Array;
  sum: number;
  count: number;
}

/**
 * offsite_scsi_command_duration_seconds, kept by hand and exposed through prom-client's registry
 * as a histogram. prom-client's Histogram.observe builds, checks and hashes the label set and
 * turns the bucket bound into a string on every call: about a microsecond per command, the
 * costliest bookkeeping of the write path. Here a command costs two Map lookups and a bucket
 * search; the exposition is built at scrape time.
 */
class CommandLatency {
  readonly name = 'offsite_scsi_command_duration_seconds';
  readonly help = 'SCSI command latency from dispatch to status, by volume and class (read, write, flush, other).';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  /** volume → opcode → the series of its class (the opcodes of one class share it). */
  private byVolume = new Map<string, Map<string, LatencySeries>>();
  private series: LatencySeries[] = [];

  observe(volume: string, op: string, seconds: number): void {
    let ops = this.byVolume.get(volume);
    if (!ops) this.byVolume.set(volume, (ops = new Map()));
    let s = ops.get(op);
    if (!s) ops.set(op, (s = this.seriesFor(volume, opClass(op))));
    let i = 0;
    while (i < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[i]) i++;
    s.counts[i]++;
    s.sum += seconds;
    s.count++;
  }

  private seriesFor(volume: string, cls: string): LatencySeries {
    let s = this.series.find((x) => x.volume === volume && x.class === cls);
    if (!s) this.series.push((s = { volume, class: cls, counts: new Float64Array(LATENCY_BUCKETS.length + 1), sum: 0, count: 0 }));
    return s;
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: SampleValue[] } {
    const values: SampleValue[] = [];
    for (const s of this.series) {
      const labels = { volume: s.volume, class: s.class };
      let cumulative = 0;
      for (let i = 0; i <= LATENCY_BUCKETS.length; i++) {
        cumulative += s.counts[i];
        values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: i < LATENCY_BUCKETS.length ? LATENCY_BUCKETS[i] : '+Inf' }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels, value: s.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.byVolume.clear();
    this.series = [];
  }
}

/**
 * A label-less gauge read at scrape time, with no series at all while `value` is undefined (what
 * it measures does not exist at this site: no witness, no replication). Not a prom-client Gauge:
 * its reset() leaves a label-less gauge at 0, and 0 is a state alert rules act on
 * (`offsite_witness_reachable == 0` fired OffsiteWitnessUnreachable at every site without a
 * witness). Registered like CommandLatency: the registry reads get() at scrape time.
 */
class ScrapedGauge {
  readonly type = 'gauge';
  readonly aggregator = 'sum';
  constructor(readonly name: string, readonly help: string, private readonly value: () => number | undefined) {}

  get(): { name: string; help: string; type: string; aggregator: string; values: SampleValue[] } {
    const v = this.value();
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: v === undefined ? [] : [{ metricName: this.name, labels: {}, value: v }] };
  }

  reset(): void {
    // Nothing kept: every scrape reads the value afresh.
  }
}

function scrapeGauge(registry: client.Registry, name: string, help: string, value: () => number | undefined): void {
  registry.registerMetric(new ScrapedGauge(name, help, value) as unknown as client.Metric);
}

/** A counter read at scrape time from a running total. */
function scrapeCounter(registry: client.Registry, name: string, help: string, value: () => number | undefined): client.Counter {
  return new client.Counter({
    name,
    help,
    registers: [registry],
    collect() {
      this.reset();
      const v = value();
      if (v !== undefined && v > 0) this.inc(v);
    },
  });
}

/** A registry with the process's default metrics under `prefix`. */
function processRegistry(prefix: string): client.Registry {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix });
  // prom-client also exports three gauges named *_total (beside the same gauges without the
  // suffix), which promtool rejects as non-counters: drop the duplicates.
  for (const what of ['handles', 'requests', 'resources']) registry.removeSingleMetric(`${prefix}nodejs_active_${what}_total`);
  return registry;
}

export function createMetrics(): Metrics {
  const registry = processRegistry('offsite_');
  let app: Appliance | undefined;

  const latency = new CommandLatency();
  registry.registerMetric(latency as unknown as client.Metric);
  const hooks: ApplianceHooks = {
    onCommandComplete: (volume, op, _status, ns) => latency.observe(volume, op, Number(ns) / 1e9),
  };

  new client.Gauge({
    name: 'offsite_volume_size_bytes',
    help: 'Size of each served volume in bytes.',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) for (const v of app.status().volumes) this.set({ volume: v.name }, v.sizeBytes);
    },
  });
  new client.Gauge({
    name: 'offsite_volume_read_only',
    help: '1 when the volume refuses writes (replica, or configured read-only).',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) for (const v of app.status().volumes) this.set({ volume: v.name }, v.readOnly ? 1 : 0);
    },
  });
  new client.Gauge({
    name: 'offsite_volume_image_behind_records',
    help: 'Journaled writes whose image write failed (I/O error, no space), retried from the journal every second; writes to the volume are refused until they land. 0 normally.',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) for (const v of app.status().volumes) this.set({ volume: v.name }, v.imageBehindRecords);
    },
  });
  new client.Gauge({
    name: 'offsite_volume_write_intent_bytes',
    help: 'Bytes in the regions of the volume written since the last checkpoint (its write-intent map): what the repair after a power cut would compare with the replica now.',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) for (const v of app.status().volumes) this.set({ volume: v.name }, v.writeIntentBytes);
    },
  });
  new client.Gauge({
    name: 'offsite_role',
    help: 'Role of this appliance (1 for the current role label).',
    labelNames: ['role'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) this.set({ role: app.status().role }, 1);
    },
  });

  // ---- iSCSI ----
  new client.Gauge({
    name: 'offsite_iscsi_sessions',
    help: 'Open iSCSI sessions per target (discovery sessions under target "").',
    labelNames: ['target'],
    registers: [registry],
    collect() {
      this.reset();
      const s = app?.iscsiStats();
      if (!s) return;
      let normal = 0;
      for (const [target, n] of Object.entries(s.sessionsByTarget)) {
        this.set({ target }, n);
        normal += n;
      }
      this.set({ target: '' }, s.sessions - normal);
    },
  });
  new client.Gauge({
    name: 'offsite_iscsi_connections',
    help: 'Open iSCSI TCP connections (logged in or logging in).',
    registers: [registry],
    collect() {
      this.set(app?.iscsiStats()?.connections ?? 0);
    },
  });
  new client.Counter({
    name: 'offsite_iscsi_events_total',
    help: 'iSCSI events: logins, login_failures, logouts, rejects, protocol_errors, nop_timeouts, reinstatements, pdus_in, pdus_out, tmf_<function>, ...',
    labelNames: ['event'],
    registers: [registry],
    collect() {
      this.reset();
      const s = app?.iscsiStats();
      if (s) for (const [event, n] of Object.entries(s.events)) this.inc({ event }, n);
    },
  });

  // ---- SCSI ----
  const perVolume = (name: string, help: string, pick: (s: ReturnType<Appliance['scsiStats']>[number]['stats']) => number) =>
    new client.Counter({
      name,
      help,
      labelNames: ['volume'],
      registers: [registry],
      collect() {
        this.reset();
        if (app) for (const { volume, stats } of app.scsiStats()) this.inc({ volume }, pick(stats));
      },
    });
  perVolume('offsite_scsi_read_bytes_total', 'Bytes read by initiators, per volume.', (s) => s.bytesRead);
  perVolume('offsite_scsi_written_bytes_total', 'Bytes written by initiators, per volume.', (s) => s.bytesWritten);
  perVolume('offsite_scsi_reservation_conflicts_total', 'Commands refused with RESERVATION CONFLICT.', (s) => s.reservationConflicts);
  perVolume('offsite_scsi_unit_attentions_total', 'Unit attention conditions reported.', (s) => s.unitAttentions);
  new client.Counter({
    name: 'offsite_scsi_commands_total',
    help: 'SCSI commands by volume and operation (e.g. READ_10, WRITE_16, UNSUPPORTED_0xNN).',
    labelNames: ['volume', 'op'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) for (const { volume, stats } of app.scsiStats()) for (const [op, n] of Object.entries(stats.commands)) this.inc({ volume, op }, n);
    },
  });
  new client.Counter({
    name: 'offsite_scsi_check_conditions_total',
    help: 'CHECK CONDITION statuses by volume and sense key.',
    labelNames: ['volume', 'sense_key'],
    registers: [registry],
    collect() {
      this.reset();
      if (app) for (const { volume, stats } of app.scsiStats()) for (const [key, n] of Object.entries(stats.errorsBySenseKey)) this.inc({ volume, sense_key: key }, n);
    },
  });

  // ---- journal ----
  const gauge = (name: string, help: string, value: () => number | undefined) => scrapeGauge(registry, name, help, () => (app ? value() : undefined));
  const counter = (name: string, help: string, value: () => number | undefined) => scrapeCounter(registry, name, help, () => (app ? value() : undefined));
  const journal = () => app?.journalStats();
  gauge('offsite_journal_bytes', 'Data bytes held in the journal.', () => journal()?.bytes);
  gauge('offsite_journal_records', 'Records held in the journal.', () => journal()?.records);
  gauge('offsite_journal_head_sequence', 'Highest journal sequence number appended.', () => journal()?.headSeq);
  gauge('offsite_journal_oldest_sequence', 'Oldest journal sequence number retained.', () => journal()?.oldestSeq);
  gauge('offsite_journal_max_bytes', 'Journal size cap (0: none).', () => (app ? (app.config.journal.maxBytes ?? 0) : undefined));
  gauge('offsite_bookmarks', 'Bookmarks held here (offsite bookmark on the primary; kept by the replica).', () => app?.bookmarkSummary()?.count);
  gauge('offsite_bookmark_newest_timestamp_seconds', 'Primary time of the newest bookmark (0: none): alert when a scheduled, application-consistent bookmark is overdue.', () => {
    const n = app?.bookmarkSummary()?.newest;
    return n === undefined ? undefined : n ? Date.parse(n.time) / 1000 : 0;
  });
  counter('offsite_journal_appends_total', 'Records appended to the journal.', () => journal()?.appends);
  counter('offsite_journal_syncs_total', 'Journal syncs to disk (FUA, SYNCHRONIZE CACHE, replica stores).', () => journal()?.syncs);
  counter('offsite_journal_trimmed_records_total', 'Records removed from the journal (replicated, checkpointed, out of the history window).', () => journal()?.trimmed);
  counter('offsite_journal_folded_records_total', 'Records folded into the base by the size cap before their history window ended.', () => journal()?.folded);
  counter('offsite_journal_torn_records_dropped_total', 'Records cut at a start as a torn tail: they failed their check after the synced point, so no writer was told they were durable.', () => journal()?.tornRecordsDropped);
  counter('offsite_journal_folded_unshipped_records_total', 'Records folded by the size cap before the replica acknowledged them (a delta sync brings the replica over).', () => journal()?.foldedUnshipped);
  const appendLatency = new client.Histogram({
    name: 'offsite_journal_append_duration_seconds',
    help: 'Time from append to the record being acknowledged: written to its journal segment (and fdatasynced, for FUA and SYNCHRONIZE CACHE).',
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
    registers: [registry],
  });
  const batchSize = new client.Histogram({
    name: 'offsite_journal_batch_records',
    help: 'Records per group commit: the records appended in one turn of the event loop share one segment write.',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [registry],
  });
  // Samples are drained into the histograms at scrape time (the journal keeps a bounded buffer).
  const drainJournal = () => {
    const j = journal();
    if (!j) return;
    for (const s of j.drainAppendLatencies()) appendLatency.observe(s);
    for (const n of j.drainBatchSizes()) batchSize.observe(n);
  };

  // ---- I/O buffer pool (src/common/buffer-pool.ts) ----
  gauge('offsite_buffer_pool_bytes', 'Bytes of free I/O buffers kept for reuse (at most 64 MiB).', () => poolStats().pooledBytes);
  counter('offsite_buffer_pool_allocations_total', 'I/O buffers allocated because none of their size was free: climbing steadily under a steady load means the pool is not keeping up (page faults, garbage collection).', () => poolStats().allocations);
  counter('offsite_buffer_pool_evicted_bytes_total', 'Free buffers dropped to make room for a size in use.', () => poolStats().evictedBytes);

  // ---- replication (primary) ----
  const repl = () => app?.replicationStatus();
  gauge('offsite_replication_configured', '1 on a primary configured to replicate (--replicate-to), else 0.', () => (app ? (app.replicationStatus() ? 1 : 0) : undefined));
  gauge('offsite_replication_paused', '1 while shipping is paused by the operator (offsite pause): on a primary, its own pause; on a replica, what its connected primary said. Else 0.', () => {
    const r = repl();
    if (r) return r.paused ? 1 : 0;
    const info = app?.replicaInfo();
    return info ? (info.receiver?.stats().primaryPaused ? 1 : 0) : undefined;
  });
  gauge('offsite_rpo_seconds', 'Recovery point: now minus the time of the oldest write not yet durable at the replica (0 when caught up).', () => repl()?.rpoSeconds);
  gauge('offsite_rpo_target_seconds', 'Recovery-point target (0: none).', () => repl()?.rpo.targetSeconds);
  gauge('offsite_rpo_projected_seconds', 'Projected RPO once the current backlog has drained.', () => repl()?.rpo.projectedSeconds);
  gauge('offsite_rpo_target_missed', '1 while the RPO is over its target.', () => { const r = repl(); return r && (r.rpo.targetMissed ? 1 : 0); });
  gauge('offsite_rpo_coalescing', '1 while the RPO controller coalesces overwrites.', () => { const r = repl(); return r && (r.rpo.coalescing ? 1 : 0); });
  gauge('offsite_rpo_throttle_delay_seconds', 'Delay the throttle adds to each write acknowledgement.', () => { const r = repl(); return r && r.rpo.throttleDelayMs / 1000; });
  counter('offsite_rpo_coalesced_bytes_saved_total', 'Bytes not shipped because a later write in the same batch replaced them.', () => repl()?.rpo.coalescedBytesSaved);
  gauge('offsite_replication_backlog_bytes', 'Journal bytes not yet durable at the replica.', () => repl()?.backlogBytes);
  gauge('offsite_replication_drain_bytes_per_second', 'Smoothed rate at which the replica acknowledges the backlog.', () => repl()?.rpo.drainBytesPerSec);
  gauge('offsite_replica_acked_sequence', 'Highest sequence durable at the replica (primary view).', () => repl()?.ackedSeq);
  gauge('offsite_link_up', '1 while the replication link is connected.', () => {
    const r = repl();
    if (r) return r.link.connected ? 1 : 0;
    const info = app?.replicaInfo();
    return info ? (info.receiver?.stats().connected ? 1 : 0) : undefined;
  });
  counter('offsite_link_raw_bytes_total', 'Replication payload bytes before compression, sent.', () => repl()?.link.bytesRaw);
  counter('offsite_link_wire_bytes_total', 'Replication bytes put on the wire (sent by the primary, received by the replica).', () => repl()?.link.bytesWire ?? app?.replicaInfo()?.receiver?.stats().bytesWireReceived);
  gauge('offsite_link_rtt_seconds', 'Replication link round-trip time (ping/pong).', () => { const r = repl(); return r && r.link.rttMs / 1000; });
  gauge('offsite_link_max_bandwidth_bytes_per_second', 'Replication link cap (0: unlimited).', () => repl()?.link.maxBandwidthBytesPerSec);
  counter('offsite_replication_connects_total', 'Replication link connections established.', () => repl()?.link.connects ?? app?.replicaInfo()?.receiver?.stats().connections);
  counter('offsite_replication_disconnects_total', 'Replication link losses.', () => repl()?.link.disconnects);
  counter('offsite_sync_started_total', 'Full image syncs started (a resume of an interrupted one is not counted).', () => repl()?.sync.started);
  counter('offsite_sync_resumed_total', 'Interrupted image syncs resumed where they stopped.', () => repl()?.sync.resumed);
  counter('offsite_sync_completed_total', 'Image syncs completed.', () => repl()?.sync.completed);
  gauge('offsite_sync_remaining_bytes', 'Bytes of volume left to scan in the running image sync (0 when none).', () => repl()?.sync.remainingBytes ?? (app?.replicaInfo() ? 0 : undefined));
  gauge('offsite_sync_total_bytes', 'Bytes of volume the running (or last) image sync scans.', () => repl()?.sync.totalBytes);
  counter('offsite_sync_chunks_sent_total', 'Sync chunks sent (different from, or missing at, the replica).', () => repl()?.sync.chunksSent);
  counter('offsite_sync_chunks_skipped_total', 'Sync chunks skipped (equal at the replica, or zero on a fresh replica).', () => repl()?.sync.chunksSkipped);

  // ---- split-brain protection ----
  gauge('offsite_fenced', '1 while this site refuses writes because it may not be the primary (witness lease lost or taken over).', () => {
    const f = app?.fenceStatus();
    return app?.config.witness ? (f?.fenced ? 1 : 0) : undefined;
  });
  gauge('offsite_witness_reachable', '1 when the last witness lease request got a usable answer (0: unreachable, refused, or not signed with the shared --witness-key).', () => (app?.config.witness && app.role === 'primary' ? (app.fenceStatus().witnessReachable ? 1 : 0) : undefined));
  gauge('offsite_witnesses', 'Witnesses configured (--witness A,B,C: a majority of them must grant the lease).', () => (app?.config.witness && app.role === 'primary' ? app.config.witness.addresses.length : undefined));
  gauge('offsite_witnesses_answering', 'Witnesses that gave a usable answer (granted or refused) to the last lease request; below offsite_witnesses, the quorum rides out fewer failures.', () => (app?.config.witness && app.role === 'primary' ? app.fenceStatus().votes.filter((v) => v.vote !== 'none').length : undefined));

  // ---- replication (replica) ----
  const replica = () => app?.replicaInfo();
  gauge('offsite_replica_received_sequence', 'Highest sequence durable in this replica\'s journal.', () => replica()?.store.durableSeq());
  gauge('offsite_replica_applied_sequence', 'Highest sequence applied to this replica\'s volumes (primary: as last reported by the replica).', () => replica()?.store.visibleSeq() ?? repl()?.replicaAppliedSeq);
  gauge('offsite_replica_consistent', '1 when the replica holds a consistent prefix of the primary (0 while syncing).', () => {
    const r = replica();
    if (r) return r.store.syncState() === 'consistent' ? 1 : 0;
    const p = repl();
    return p && (p.replicaConsistent ? 1 : 0);
  });
  gauge('offsite_replica_consistent_point_timestamp_seconds', 'Primary time of the last write applied at the replica.', () => { const r = replica(); return r && r.store.visibleTimeMs() / 1000; });
  counter('offsite_replication_refused_peers_total', 'Replication connections refused at the TLS handshake (wrong or missing link key).', () => replica()?.receiver?.stats().refusedPeers);
  counter('offsite_replica_rejected_frames_total', 'Replication frames rejected (corrupt, duplicate, out of order, oversized).', () => replica()?.receiver?.stats().rejectedFrames);
  counter('offsite_replica_applied_records_total', 'Records applied to the replica volumes.', () => replica()?.store.counters().recordsApplied);
  counter('offsite_replica_applied_bytes_total', 'Bytes applied to the replica volumes.', () => replica()?.store.counters().bytesApplied);
  counter('offsite_replica_verified_bytes_total', 'Bytes this replica compared with the primary for online verify.', () => replica()?.store.counters().verifiedBytes);
  counter('offsite_replica_verify_repaired_bytes_total', 'Bytes of this replica\'s volumes overwritten with the primary\'s data by verify --repair.', () => replica()?.store.counters().repairedBytes);
  counter('offsite_replica_verify_mismatched_chunks_total', 'Chunks this replica found different from the primary during online verify.', () => replica()?.store.counters().verifyMismatches);

  // ---- online verify (primary) ----
  const verify = () => app?.verifyStatus();
  gauge('offsite_verify_running', '1 while an online verify (offsite verify) compares the volumes with the replica.', () => { const v = verify(); return v && (v.state === 'running' ? 1 : 0); });
  gauge('offsite_verify_total_bytes', 'Bytes the running (or last) verify covers.', () => verify()?.totalBytes);
  gauge('offsite_verify_checked_bytes', 'Bytes the running (or last) verify compared so far.', () => verify()?.checkedBytes);
  gauge('offsite_verify_mismatched_chunks', 'Chunks the running (or last) verify found different on the replica (0: none).', () => verify()?.mismatchedChunks);
  gauge('offsite_verify_repaired_chunks', 'Differing chunks the running (or last) verify --repair overwrote with the primary\'s data.', () => verify()?.repairedChunks);
  gauge('offsite_verify_unverified_bytes', 'Bytes the running (or last) verify could not compare (writes kept overtaking them).', () => verify()?.unverifiedBytes);
  gauge('offsite_verify_last_finished_timestamp_seconds', 'When the last verify ended (done, stopped or failed).', () => { const f = verify()?.finishedAt; return f ? Date.parse(f) / 1000 : undefined; });
  gauge('offsite_verify_schedule_seconds', 'How often the primary verifies its replica by itself (--verify-every; 0: only when asked).', () => verify()?.scheduleEverySeconds);
  gauge('offsite_verify_last_failed', '1 when the last verify failed (see /status verify.error).', () => { const v = verify(); return v && (v.state === 'failed' ? 1 : 0); });

  const baseMetrics = registry.metrics.bind(registry);
  registry.metrics = async () => {
    drainJournal();
    return baseMetrics();
  };

  return {
    registry,
    hooks,
    attach(a: Appliance) {
      app = a;
    },
  };
}

/**
 * The witness's own metrics (offsite witness serves them at GET /metrics): its lease, what it
 * granted and refused, and its process. Read at scrape time from the running witness.
 */
export function witnessMetrics(witness: () => RunningWitness | undefined): { registry: client.Registry; render(): Promise<{ contentType: string; body: string }> } {
  const registry = processRegistry('offsite_witness_');
  const holder = () => {
    const w = witness();
    const h = w?.book.holder;
    return w && h && h.expiresAt > w.now() ? { w, h } : undefined;
  };
  const gauge = (name: string, help: string, value: () => number | undefined) => scrapeGauge(registry, name, help, value);
  gauge('offsite_witness_lease_seconds', 'Lease length this witness grants.', () => { const w = witness(); return w && w.leaseMs / 1000; });
  gauge('offsite_witness_authenticated', '1 when requests must be signed with the shared key (--key-file).', () => { const w = witness(); return w && (w.authenticated ? 1 : 0); });
  gauge('offsite_witness_lease_held', '1 while a site holds an unexpired lease.', () => (witness() ? (holder() ? 1 : 0) : undefined));
  gauge('offsite_witness_state_writable', 'With --state: 1 while the state file can be written (checked at each change of holder and every 30 s); 0: no lease can change hands. No series without --state.', () => { const v = witness()?.stateWritable(); return v === undefined ? undefined : v ? 1 : 0; });
  gauge('offsite_witness_lease_remaining_seconds', 'Time left on the current lease (0: none held).', () => { const x = holder(); return witness() ? (x ? (x.h.expiresAt - x.w.now()) / 1000 : 0) : undefined; });
  new client.Gauge({
    name: 'offsite_witness_lease_holder_info',
    help: 'The site holding the lease (1; no series while none does).',
    labelNames: ['site_id', 'role'],
    registers: [registry],
    collect() {
      this.reset();
      const x = holder();
      if (x) this.set({ site_id: x.h.siteId, role: x.h.role }, 1);
    },
  });
  const counter = (name: string, help: string, value: (s: WitnessStats) => number) => scrapeCounter(registry, name, help, () => { const w = witness(); return w && value(w.stats()); });
  counter('offsite_witness_grants_total', 'Lease requests granted (first grants and renewals).', (s) => s.grants);
  counter('offsite_witness_takeovers_total', 'Leases given to a site other than the previous holder, once that one stopped renewing.', (s) => s.takeovers);
  new client.Counter({
    name: 'offsite_witness_refused_total',
    help: 'Lease requests refused, by reason: held (another site holds the lease), superseded (the lease moved on since the asking site held it), starting (first lease after a start), unauthorized, clock, replay, bad_request, state (a grant not given: the --state file could not be written).',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      const w = witness();
      if (!w) return;
      for (const [reason, n] of Object.entries(w.stats().refused)) this.inc({ reason }, n);
    },
  });
  return {
    registry,
    render: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),
  };
}
