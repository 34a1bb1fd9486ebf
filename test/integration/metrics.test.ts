import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { writeMetricsState } from '../../deploy/metrics-targets.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { freePort } from '../harness/ports.js';
import { randomFile, run } from '../harness/tools.js';
import { vsky } from '../harness/vsky.js';

// A real Prometheus server (the Debian package's binary, scrape and rule
// evaluation every second) scrapes a local cluster started with metrics on,
// through the file_sd target list `vsky cluster up` writes, and the rules of
// deploy/prometheus/alerts.yml (with `for:` cut to 2 s). Its HTTP API shows
// every daemon up, the head's write counter climbing while nbdcopy writes,
// and VskyDiskFailed firing for the disk `vsky disk fail` failed.

const SIZE = 32 * MiB;
const ALERTS = resolve(import.meta.dirname, '../../deploy/prometheus/alerts.yml');

interface PromSample { metric: Record<string, string>; value: [number, string] }
interface PromTarget { health: string; labels: Record<string, string>; lastError: string }
interface PromAlert { labels: Record<string, string>; state: string }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('Prometheus scraping a local cluster', () => {
  let c: LocalCluster;
  let work: string;
  let prom: ChildProcess | undefined;
  let api: string;
  let uri: string;

  async function get<T>(path: string): Promise<T> {
    const res = await fetch(`${api}${path}`);
    const body = await res.json() as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`Prometheus ${path}: ${body.error ?? res.status}`);
    return body.data;
  }
  const query = (q: string) => get<{ result: PromSample[] }>(`/api/v1/query?query=${encodeURIComponent(q)}`).then((d) => d.result);
  async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await probe().catch(() => undefined);
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await sleep(250);
    }
  }

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'vsky-metrics-'));
    c = await startTestCluster({ metrics: true });
    uri = await c.ensureVolume('mvol', SIZE, 3);
    // What `vsky cluster up` writes: DIR/metrics.json and the file_sd list.
    const { fileSd } = writeMetricsState(c.opts.dir, c.metricsEndpoints);
    const rules = readFileSync(ALERTS, 'utf8').replace(/for: \d+[smh]/g, 'for: 2s');
    writeFileSync(join(work, 'alerts.yml'), rules);
    writeFileSync(join(work, 'prometheus.yml'), [
      'global: { scrape_interval: 1s, evaluation_interval: 1s }',
      'rule_files: [alerts.yml]',
      'scrape_configs:',
      '  - job_name: vsky',
      `    file_sd_configs: [{ files: ['${fileSd}'] }]`,
      '',
    ].join('\n'));
    const port = await freePort();
    api = `http://127.0.0.1:${port}`;
    mkdirSync(join(work, 'data'));
    prom = spawn('prometheus', [
      `--config.file=${join(work, 'prometheus.yml')}`, `--storage.tsdb.path=${join(work, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let promLog = '';
    prom.stderr!.on('data', (d: Buffer) => { promLog += d.toString(); });
    await until(`Prometheus ready at ${api} (log: ${promLog})`, 20_000, async () => ((await fetch(`${api}/-/ready`)).ok ? true : undefined));
    randomFile(join(work, 'src.img'), SIZE);
  }, 60_000);

  afterAll(async () => {
    if (prom?.pid !== undefined && prom.exitCode === null) {
      const exited = new Promise((r) => prom!.once('exit', r));
      prom.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (prom.exitCode === null) prom.kill('SIGKILL');
    }
    await destroyTestCluster(c);
    rmSync(work, { recursive: true, force: true });
  });

  it('scrapes every daemon: the manager, three storage nodes and the head are up', async () => {
    const endpoints = c.metricsEndpoints;
    expect(endpoints.map((e) => e.role).sort()).toEqual(['head-agent', 'manager', 'storage-node', 'storage-node', 'storage-node']);
    // `vsky cluster metrics` prints what was recorded.
    const r = await vsky(['cluster', 'metrics', '--dir', c.opts.dir, '--json']);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(JSON.parse(String(r.stdout))).toEqual({ endpoints });
    const targets = await until('five healthy targets', 20_000, async () => {
      const t = (await get<{ activeTargets: PromTarget[] }>('/api/v1/targets')).activeTargets;
      return t.length === 5 && t.every((x) => x.health === 'up') ? t : undefined;
    });
    expect(targets.map((t) => t.labels.daemon).sort()).toEqual(['head1', 'manager', 'node1', 'node2', 'node3']);
    const up = await query('up{job="vsky"}');
    expect(up.map((s) => s.value[1])).toEqual(['1', '1', '1', '1', '1']);
  }, 30_000);

  it('the head\'s write counter climbs while nbdcopy writes to the volume', async () => {
    const series = 'vsky_head_volume_write_bytes_total{volume="mvol"}';
    const value = async () => {
      const r = await query(series);
      return r.length === 1 ? Number(r[0]!.value[1]) : undefined;
    };
    const before = await until(`${series} scraped`, 10_000, value);
    let copying = true;
    const copier = (async () => {
      let copies = 0;
      try {
        for (const end = Date.now() + 6000; Date.now() < end; copies++) await run('nbdcopy', [join(work, 'src.img'), uri], 30_000);
      } finally {
        copying = false;
      }
      return copies;
    })();
    const seen: number[] = [];
    while (copying) {
      const v = await value().catch(() => undefined);
      if (v !== undefined && v !== seen.at(-1)) seen.push(v);
      await sleep(500);
    }
    const copies = await copier;
    expect(copies).toBeGreaterThan(0);
    // Scraped while the copies ran: the counter went up at least twice, and never down.
    expect(seen.length, `values seen: ${seen.join(', ')}`).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeGreaterThan(seen[i - 1]!);
    await until(`${series} = ${before + copies * SIZE}`, 10_000, async () => ((await value()) === before + copies * SIZE ? true : undefined));
    const rate = await query('rate(vsky_head_volume_write_ops_total{volume="mvol"}[5s])');
    expect(rate).toHaveLength(1);
  }, 40_000);

  it('each daemon\'s metrics pass promtool check metrics', async () => {
    for (const e of c.metricsEndpoints) {
      const text = await (await fetch(e.url)).text();
      const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false, timeout: 20_000 });
      expect(`${e.daemon}: ${String(r.stdout)}${String(r.stderr)}`).toBe(`${e.daemon}: `);
      expect(r.exitCode).toBe(0);
    }
  }, 30_000);

  it('VskyDiskFailed fires for the disk `vsky disk fail` failed', async () => {
    const alerts = async () => (await get<{ alerts: PromAlert[] }>('/api/v1/alerts')).alerts.filter((a) => a.labels.alertname === 'VskyDiskFailed');
    // Premise: no disk alert before, and the manager's disk metrics are being scraped.
    expect(await alerts()).toEqual([]);
    expect(await query('vsky_manager_disk_state{state="active"} == 1')).toHaveLength(6);
    const listDisks = async () => {
      const m = c.client();
      try {
        return (await call(m, 'ListDisks', { server: '' })).disks;
      } finally {
        m.close();
      }
    };
    const victim = (await listDisks())[0]!;
    const failed = await vsky(['disk', 'fail', victim.diskId], c.managerAddress);
    expect(failed.exitCode, String(failed.stderr)).toBe(0);
    expect((await listDisks()).find((d) => d.diskId === victim.diskId)?.state).toBe('failed');
    const firing = await until('VskyDiskFailed firing', 20_000, async () => {
      const a = (await alerts()).find((x) => x.state === 'firing');
      return a;
    });
    expect(firing.labels).toMatchObject({ disk: victim.diskId, server: victim.serverName, severity: 'critical' });
    expect((await alerts()).map((a) => a.labels.disk)).toEqual([victim.diskId]);
  }, 30_000);
});
