/**
 * The Prometheus registry: prom-client metrics named offsite_*. Most are filled at scrape time
 * from the stats objects the lower layers keep (they never import prom-client); command
 * latencies arrive through the appliance's hooks as they happen. Metric names are a contract
 * with dashboards, alert rules and operators' scripts: add freely, never rename.
 */
import client from 'prom-client';
import type { Appliance, ApplianceHooks } from '../appliance/appliance';

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

export function createMetrics(): Metrics {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'offsite_' });
  // prom-client also exports three gauges named *_total (beside the same gauges without the
  // suffix), which promtool rejects as non-counters: drop the duplicates.
  for (const what of ['handles', 'requests', 'resources']) registry.removeSingleMetric(`offsite_nodejs_active_${what}_total`);
  let app: Appliance | undefined;

  const latency = new client.Histogram({
    name: 'offsite_scsi_command_duration_seconds',
    help: 'SCSI command latency from dispatch to status, by volume and class (read, write, flush, other).',
    labelNames: ['volume', 'class'],
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const hooks: ApplianceHooks = {
    onCommandComplete: (volume, op, _status, ns) => latency.observe({ volume, class: opClass(op) }, Number(ns) / 1e9),
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

  return {
    registry,
    hooks,
    attach(a: Appliance) {
      app = a;
    },
  };
}
