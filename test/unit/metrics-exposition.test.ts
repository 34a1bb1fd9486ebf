import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHeadAgent, type HeadAgentHandle } from '../../head-agent/daemon.js';
import { startManager, type ManagerHandle } from '../../manager/daemon.js';
import { startStorageNode, type StorageNodeHandle } from '../../storage-node/daemon.js';
import { call, headAgentClient, managerClient, storageNodeClient } from '../../shared/grpc.js';
import { MiB } from '../../shared/constants.js';
import { HistogramFamily } from '../../shared/metrics/families.js';
import { LATENCY_BUCKETS_S, LatencyHistogram } from '../../shared/metrics/latency-histogram.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { VolumeMap } from '../../head-agent/attachments.js';
import { NbdClient } from '../harness/nbd-client.js';

// Each daemon's /metrics, served by the real daemons in-process
// (--metrics-listen), passes `promtool check metrics` (the Prometheus
// project's own linter: HELP, TYPE, _total counters, base units) and shows
// the I/O it served: a real NBD client writes through the head to two
// storage nodes; the manager answers a gRPC call and an XML-RPC call.

const CHUNK = 4 * MiB;
let dir: string;
const nodes: StorageNodeHandle[] = [];
let head: HeadAgentHandle;
let manager: ManagerHandle;

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/plain; version=0.0.4');
  return res.text();
}

async function promtoolCheck(text: string): Promise<{ exitCode: number | undefined; output: string }> {
  const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false, timeout: 20_000 });
  return { exitCode: r.exitCode, output: `${String(r.stdout)}${String(r.stderr)}` };
}

/** The value of one sample line `name{labels} value` (labels given in the order the daemon prints them). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vsky-metrics-unit-'));
  manager = await startManager({
    dataDir: join(dir, 'manager'), listen: '127.0.0.1:0', chunkSize: CHUNK, heartbeatTimeoutMs: 60_000,
    xmlrpc: { listen: '127.0.0.1:0' }, metricsListen: '127.0.0.1:0',
  });
  for (let i = 0; i < 2; i++) {
    nodes.push(await startStorageNode({
      dataDir: join(dir, `node${i}`), name: `node${i}`, host: '127.0.0.1', dataPort: 0, grpcPort: 0,
      disks: [{ path: join(dir, `node${i}.disk`), size: 32 * MiB }], chunkSize: CHUNK, labels: {}, heartbeatIntervalMs: 1000,
      metricsListen: '127.0.0.1:0',
    }));
  }
  head = await startHeadAgent({ dataDir: join(dir, 'head'), name: 'head1', host: '127.0.0.1', grpcPort: 0, nbdPort: 0, heartbeatIntervalMs: 1000, metricsListen: '127.0.0.1:0' });
  // A standalone volume on the two nodes (no manager in the data path), attached over gRPC.
  const replicas = [];
  for (let slot = 0; slot < 2; slot++) {
    const c = storageNodeClient(nodes[slot]!.controlAddress);
    const info = await call<object, NodeInfo__Output>(c, c.GetInfo, {});
    const diskId = info.disks[0]!.diskId;
    await call(c, c.AllocateChunk, {
      diskId, chunkIndex: 0,
      identity: { volumeId: 7, volumeName: 'mvol', volumeSize: CHUNK, segment: 0, slot, segmentCount: 1, replicas: 2, generation: 1, epoch: 0 },
    });
    c.close();
    replicas.push({ slot, serverId: info.serverId, dataAddress: nodes[slot]!.dataAddress, diskId, chunkIndex: 0, state: 'in_sync', controlAddress: nodes[slot]!.controlAddress });
  }
  const map: VolumeMap = { volumeId: 7, name: 'mvol', size: CHUNK, chunkSize: CHUNK, replicas: 2, generation: 1, segments: [{ index: 0, replicas }] } as unknown as VolumeMap;
  const hc = headAgentClient(head.controlAddress);
  await call(hc, hc.Attach, { map, epoch: 2 });
  hc.close();
}, 60_000);

afterAll(async () => {
  await head?.close();
  await Promise.all(nodes.map((n) => n.close()));
  await manager?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('daemon metrics exposition', () => {
  it('the head counts the NBD I/O it served, per volume, and its text passes promtool check metrics', async () => {
    const nbd = await NbdClient.connect(`nbd://${head.nbdAddress}/mvol`);
    try {
      for (let i = 0; i < 8; i++) await nbd.write(i * 65536, Buffer.alloc(65536, i + 1));
      await nbd.flush();
      expect((await nbd.read(0, 65536))[0]).toBe(1);
    } finally {
      nbd.close();
    }
    const text = await scrape(head.metricsUrl);
    expect(sample(text, 'vsky_head_volume_write_ops_total{volume="mvol"}')).toBe(8);
    expect(sample(text, 'vsky_head_volume_write_bytes_total{volume="mvol"}')).toBe(8 * 65536);
    expect(sample(text, 'vsky_head_volume_write_latency_seconds_count{volume="mvol"}')).toBe(8);
    expect(sample(text, 'vsky_head_volume_write_latency_seconds_bucket{volume="mvol",le="+Inf"}')).toBe(8);
    expect(sample(text, 'vsky_head_volume_read_ops_total{volume="mvol"}')).toBe(1);
    expect(sample(text, 'vsky_head_volume_flush_ops_total{volume="mvol"}')).toBe(1);
    expect(sample(text, 'vsky_head_volume_lease_state{volume="mvol",state="held"}')).toBe(1);
    expect(sample(text, 'vsky_head_volume_lease_state{volume="mvol",state="fenced"}')).toBe(0);
    expect(text).toContain('process_cpu_seconds_total');
    const check = await promtoolCheck(text);
    expect(check.output).toBe('');
    expect(check.exitCode).toBe(0);
  });

  it('each storage node counts the writes per disk, with fdatasync latency, and passes promtool check metrics', async () => {
    for (const n of nodes) {
      const text = await scrape(n.metricsUrl);
      const line = text.split('\n').find((l) => l.startsWith('vsky_node_disk_write_ops_total{'));
      expect(line, text).toBeDefined();
      expect(Number(line!.split(' ').at(-1))).toBe(8);
      expect(text).toMatch(/vsky_node_disk_fdatasync_latency_seconds_count\{disk="[0-9a-f-]+",server="node\d"\} [1-9]/);
      expect(text).toMatch(/vsky_node_disk_chunks\{disk="[0-9a-f-]+",server="node\d",state="used"\} 1/);
      expect(text).toMatch(/vsky_node_disk_state\{disk="[0-9a-f-]+",server="node\d",state="active"\} 1/);
      const check = await promtoolCheck(text);
      expect(check.output).toBe('');
      expect(check.exitCode).toBe(0);
    }
  });

  it('the manager times its gRPC and XML-RPC calls by method and passes promtool check metrics', async () => {
    const m = managerClient(manager.address);
    await call(m, 'Status', {});
    m.close();
    const res = await fetch(manager.xmlrpcUrl!, {
      method: 'POST', headers: { 'content-type': 'text/xml' },
      body: '<?xml version="1.0"?><methodCall><methodName>listStorageServers</methodName><params><param><value><struct><member><name>ver</name><value><int>5</int></value></member></struct></value></param></params></methodCall>',
    });
    expect(res.status).toBe(200);
    await res.text();
    const text = await scrape(manager.metricsUrl);
    expect(sample(text, 'vsky_manager_api_call_duration_seconds_count{api="grpc",method="Status"}')).toBe(1);
    expect(sample(text, 'vsky_manager_api_call_duration_seconds_count{api="xmlrpc",method="listStorageServers"}')).toBe(1);
    expect(sample(text, 'vsky_manager_servers{state="active"}')).toBe(0);
    expect(sample(text, 'vsky_manager_capacity_bytes')).toBe(0);
    const check = await promtoolCheck(text);
    expect(check.output).toBe('');
    expect(check.exitCode).toBe(0);
  });

  it('answers 404 off /metrics and 405 for other methods', async () => {
    const base = new URL(head.metricsUrl);
    expect((await fetch(new URL('/', base))).status).toBe(404);
    expect((await fetch(head.metricsUrl, { method: 'POST' })).status).toBe(405);
  });
});

describe('deploy/prometheus', () => {
  const here = join(import.meta.dirname, '../../deploy/prometheus');
  it('alerts.yml passes promtool check rules', async () => {
    const r = await execa('promtool', ['check', 'rules', join(here, 'alerts.yml')], { reject: false, timeout: 20_000 });
    expect(r.exitCode, `${String(r.stdout)}${String(r.stderr)}`).toBe(0);
    expect(String(r.stdout)).toContain('SUCCESS: 6 rules found');
  });
  it('prometheus.yml passes promtool check config (with its rule file)', async () => {
    const r = await execa('promtool', ['check', 'config', join(here, 'prometheus.yml')], { reject: false, timeout: 20_000 });
    expect(r.exitCode, `${String(r.stdout)}${String(r.stderr)}`).toBe(0);
    expect(String(r.stdout)).toContain('SUCCESS: 1 rule files found');
  });
});

describe('LatencyHistogram', () => {
  it('puts each value in the first bucket whose bound is not below it, and formats cumulative buckets', async () => {
    const h = new LatencyHistogram();
    for (const v of [0, 0.00005, 0.00006, 0.003, 10, 11, -1]) h.observe(v);
    expect(h.count).toBe(7);
    expect(h.cumulative(0)).toBe(3); // 0, 0.00005 and -1 (taken as 0)
    expect(h.cumulative(LATENCY_BUCKETS_S.indexOf(0.005))).toBe(5);
    expect(h.cumulative(LATENCY_BUCKETS_S.length - 1)).toBe(6); // 11 s is above the last bound
    const registry = new Registry();
    new HistogramFamily(registry, { name: 'x_seconds', help: 'x', labelNames: ['volume'], read: () => [{ labels: { volume: 'v' }, histogram: h }] });
    const text = await registry.metrics();
    expect(text).toContain('x_seconds_bucket{volume="v",le="0.00005"} 3');
    expect(text).toContain('x_seconds_bucket{volume="v",le="10"} 6');
    expect(text).toContain('x_seconds_bucket{volume="v",le="+Inf"} 7');
    expect(text).toContain('x_seconds_count{volume="v"} 7');
    expect((await promtoolCheck(text)).exitCode).toBe(0);
  });
});
