/** In-memory implementations of the replication ports, for protocol tests of shipper/receiver. */
import type { ReceiverSink, ReplicatedRecord, ShipperSource, VolumeDescriptor } from '../../src/replication/ports';

export class MemorySource implements ShipperSource {
  readonly records: ReplicatedRecord[] = [];
  private waiters: (() => void)[] = [];
  acked = 0;
  trimmedThrough = 0;
  constructor(readonly siteId = 'primary-site', private readonly vols: VolumeDescriptor[] = [{ name: 'v', sizeBytes: 1 << 20, blockSize: 512, uuid: '00'.repeat(16) }]) {}
  volumes() { return this.vols; }
  headSeq() { return this.records.length; }
  oldestSeq() { return this.trimmedThrough + 1; }
  append(volume: string, offsetBytes: number, data: Buffer): number {
    const seq = this.records.length + 1;
    this.records.push({ seq, timeMs: Date.now(), volume, op: 'write', offsetBytes, lengthBytes: data.length, data });
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
    return seq;
  }
  async readAfter(afterSeq: number, maxBytes: number): Promise<ReplicatedRecord[]> {
    const out: ReplicatedRecord[] = [];
    let bytes = 0;
    for (let s = Math.max(afterSeq, this.trimmedThrough); s < this.records.length && (out.length === 0 || bytes < maxBytes); s++) {
      out.push(this.records[s]);
      bytes += this.records[s].data?.length ?? 0;
    }
    return out;
  }
  waitForAppend(afterSeq: number): Promise<void> {
    if (this.records.length > afterSeq) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }
  timeOf(seq: number) { return this.records[seq - 1]?.timeMs; }
  bytesAfter(afterSeq: number) {
    let n = 0;
    for (let s = Math.max(afterSeq, this.trimmedThrough); s < this.records.length; s++) n += this.records[s].data?.length ?? 0;
    return n;
  }
  replicaAcked(seq: number) { this.acked = Math.max(this.acked, seq); }
}

export class MemorySink implements ReceiverSink {
  readonly stored: ReplicatedRecord[] = [];
  readonly image = new Map<string, Buffer>();
  volumesSeen: VolumeDescriptor[] = [];
  constructor(readonly siteId = 'replica-site') {}
  durableSeq() { return this.stored.length ? this.stored[this.stored.length - 1].seq : 0; }
  appliedSeq() { return this.durableSeq(); }
  async ensureVolumes(volumes: VolumeDescriptor[]) {
    this.volumesSeen = volumes;
    for (const v of volumes) if (!this.image.has(v.name)) this.image.set(v.name, Buffer.alloc(v.sizeBytes));
  }
  async store(records: ReplicatedRecord[]) {
    if (records[0].seq !== this.durableSeq() + 1) throw new Error(`sink got ${records[0].seq} after ${this.durableSeq()}`);
    for (const r of records) {
      this.stored.push({ ...r, data: r.data && Buffer.from(r.data) });
      if (r.op === 'write') r.data!.copy(this.image.get(r.volume)!, r.offsetBytes);
    }
  }
}
