/**
 * The Prometheus registry: prom-client metrics named offsite_*, filled at scrape time from the
 * stats objects the lower layers keep (they never import prom-client themselves).
 */
import client from 'prom-client';
import type { Appliance } from '../appliance/appliance';

export function createMetrics(app: Appliance): client.Registry {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'offsite_process_' });

  new client.Gauge({
    name: 'offsite_volume_size_bytes',
    help: 'Size of each served volume in bytes.',
    labelNames: ['volume'],
    registers: [registry],
    collect() {
      this.reset();
      for (const v of app.status().volumes) this.set({ volume: v.name }, v.sizeBytes);
    },
  });
  new client.Gauge({
    name: 'offsite_role',
    help: 'Role of this appliance (1 for the current role label).',
    labelNames: ['role'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ role: app.config.role }, 1);
    },
  });
  return registry;
}
