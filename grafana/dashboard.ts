/**
 * The offsite Grafana dashboard, generated from code (never hand-edited JSON):
 *   node dist/grafana/dashboard.js            writes grafana/dashboards/offsite.json
 *   node dist/grafana/dashboard.js --check    exits 1 when the committed JSON is stale
 * PANELS is also read by the Prometheus test, which proves every query returns data.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DashboardBuilder, DatasourceVariableBuilder, QueryVariableBuilder, RowBuilder, VariableRefresh } from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatPanel } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesPanel } from '@grafana/grafana-foundation-sdk/timeseries';

export interface PanelSpec {
  row: string;
  title: string;
  unit: string;
  kind?: 'timeseries' | 'stat';
  queries: { expr: string; legend: string }[];
}

const site = 'instance=~"$site"';

export const PANELS: PanelSpec[] = [
  { row: 'Recovery point', title: 'RPO against target', unit: 's', queries: [
    { expr: `offsite_rpo_seconds{${site}}`, legend: '{{instance}} rpo' },
    { expr: `offsite_rpo_target_seconds{${site}}`, legend: '{{instance}} target' },
    { expr: `offsite_rpo_projected_seconds{${site}}`, legend: '{{instance}} projected' },
  ] },
  { row: 'Recovery point', title: 'Backlog and drain time', unit: 'bytes', queries: [
    { expr: `offsite_replication_backlog_bytes{${site}}`, legend: '{{instance}} backlog' },
  ] },
  { row: 'Recovery point', title: 'Time to drain the backlog', unit: 's', queries: [
    { expr: `offsite_replication_backlog_bytes{${site}} / clamp_min(rate(offsite_link_raw_bytes_total{${site}}[1m]), 1)`, legend: '{{instance}}' },
  ] },
  { row: 'Recovery point', title: 'Link up', unit: 'none', kind: 'stat', queries: [
    { expr: `offsite_link_up{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Recovery point', title: 'Shipping paused (offsite pause)', unit: 'none', kind: 'stat', queries: [
    { expr: `offsite_replication_paused{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Link', title: 'Link throughput: raw vs on the wire', unit: 'Bps', queries: [
    { expr: `rate(offsite_link_raw_bytes_total{${site}}[1m])`, legend: '{{instance}} raw' },
    { expr: `rate(offsite_link_wire_bytes_total{${site}}[1m])`, legend: '{{instance}} wire' },
  ] },
  { row: 'Link', title: 'Compression ratio', unit: 'none', queries: [
    { expr: `offsite_link_raw_bytes_total{${site}} / clamp_min(offsite_link_wire_bytes_total{${site}}, 1)`, legend: '{{instance}}' },
  ] },
  { row: 'Link', title: 'Round-trip time', unit: 's', queries: [
    { expr: `offsite_link_rtt_seconds{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Link', title: 'Throttle delay and coalescing', unit: 's', queries: [
    { expr: `offsite_rpo_throttle_delay_seconds{${site}}`, legend: '{{instance}} throttle delay' },
    { expr: `rate(offsite_rpo_coalesced_bytes_saved_total{${site}}[1m])`, legend: '{{instance}} coalesced bytes saved/s' },
  ] },
  { row: 'I/O', title: 'IOPS by operation', unit: 'iops', queries: [
    { expr: `sum by (instance, op) (rate(offsite_scsi_commands_total{${site}}[1m]))`, legend: '{{instance}} {{op}}' },
  ] },
  { row: 'I/O', title: 'Command latency p99', unit: 's', queries: [
    { expr: `histogram_quantile(0.99, sum by (instance, le) (rate(offsite_scsi_command_duration_seconds_bucket{${site}}[1m])))`, legend: '{{instance}} p99' },
  ] },
  { row: 'I/O', title: 'Bytes read and written', unit: 'Bps', queries: [
    { expr: `rate(offsite_scsi_read_bytes_total{${site}}[1m])`, legend: '{{instance}} read' },
    { expr: `rate(offsite_scsi_written_bytes_total{${site}}[1m])`, legend: '{{instance}} written' },
  ] },
  { row: 'I/O', title: 'iSCSI sessions', unit: 'none', kind: 'stat', queries: [
    { expr: `offsite_iscsi_sessions{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Journal and sync', title: 'Journal size', unit: 'bytes', queries: [
    { expr: `offsite_journal_bytes{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Journal and sync', title: 'Journal sequence: head, acked, applied', unit: 'none', queries: [
    { expr: `offsite_journal_head_sequence{${site}}`, legend: '{{instance}} head' },
    { expr: `offsite_replica_acked_sequence{${site}}`, legend: '{{instance}} acked' },
    { expr: `offsite_replica_applied_sequence{${site}}`, legend: '{{instance}} applied' },
  ] },
  { row: 'Journal and sync', title: 'Sync progress (remaining)', unit: 'bytes', queries: [
    { expr: `offsite_sync_remaining_bytes{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Split-brain protection', title: 'Fenced (writes refused)', unit: 'none', kind: 'stat', queries: [
    { expr: `offsite_fenced{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Split-brain protection', title: 'Witnesses answering', unit: 'none', queries: [
    { expr: `offsite_witnesses_answering{${site}}`, legend: '{{instance}} answering' },
    { expr: `offsite_witnesses{${site}}`, legend: '{{instance}} configured' },
  ] },
  { row: 'Online verify', title: 'Chunks differing on the replica (last verify)', unit: 'none', kind: 'stat', queries: [
    { expr: `offsite_verify_mismatched_chunks{${site}}`, legend: '{{instance}}' },
  ] },
  { row: 'Online verify', title: 'Verify progress', unit: 'bytes', queries: [
    { expr: `offsite_verify_checked_bytes{${site}}`, legend: '{{instance}} compared' },
    { expr: `offsite_verify_unverified_bytes{${site}}`, legend: '{{instance}} not compared' },
    { expr: `offsite_verify_total_bytes{${site}}`, legend: '{{instance}} total' },
  ] },
  { row: 'Online verify', title: 'Repair a power cut would need now (regions being written)', unit: 'bytes', queries: [
    { expr: `offsite_volume_write_intent_bytes{${site}}`, legend: '{{instance}} {{volume}}' },
  ] },
];

export function buildDashboard(): unknown {
  const ds = { type: 'prometheus', uid: '${datasource}' };
  const db = new DashboardBuilder('offsite: recovery point and replication')
    .uid('offsite-rpo')
    .tags(['offsite', 'replication', 'iscsi'])
    .refresh('10s')
    .time({ from: 'now-1h', to: 'now' })
    .timezone('browser');
  db.withVariable(new DatasourceVariableBuilder('datasource').label('Data source').type('prometheus'));
  db.withVariable(
    new QueryVariableBuilder('site')
      .label('Site')
      .datasource(ds)
      .query('label_values(offsite_role, instance)')
      .refresh(VariableRefresh.OnTimeRangeChanged)
      .includeAll(true)
      .multi(true),
  );
  let currentRow = '';
  let y = 0;
  let x = 0;
  for (const p of PANELS) {
    if (p.row !== currentRow) {
      currentRow = p.row;
      if (x) y += 8;
      x = 0;
      db.withRow(new RowBuilder(p.row).gridPos({ h: 1, w: 24, x: 0, y }));
      y += 1;
    }
    const panel = p.kind === 'stat' ? new StatPanel() : new TimeseriesPanel();
    panel.title(p.title).unit(p.unit).datasource(ds).gridPos({ h: 8, w: 12, x, y });
    p.queries.forEach((q, i) => panel.withTarget(new DataqueryBuilder().expr(q.expr).legendFormat(q.legend).refId(String.fromCharCode(65 + i))));
    db.withPanel(panel);
    x += 12;
    if (x >= 24) {
      x = 0;
      y += 8;
    }
  }
  return db.build();
}

export const DASHBOARD_PATH = path.resolve(__dirname, '../../grafana/dashboards/offsite.json');

export function renderDashboard(): string {
  return JSON.stringify(buildDashboard(), null, 2) + '\n';
}

if (require.main === module) {
  const json = renderDashboard();
  if (process.argv.includes('--check')) {
    const committed = readFileSync(DASHBOARD_PATH, 'utf8');
    if (committed !== json) {
      process.stderr.write(`${DASHBOARD_PATH} is stale: run make dashboard\n`);
      process.exit(1);
    }
  } else {
    writeFileSync(DASHBOARD_PATH, json);
  }
}
