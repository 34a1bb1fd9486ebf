import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vskyEntry } from '../../deploy/daemon-process.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// `vsky events` against a real cluster: the manager's event log lists a
// volume's life (created, attached with its epoch), and --follow prints a new
// event as it happens until it is stopped (docs/events.md).

interface Event { seq: number; timeMs: number; kind: string; target: string; reason: string; details: Record<string, string> }

describe('vsky events', () => {
  let c: LocalCluster;
  beforeAll(async () => { c = await startTestCluster(); });
  afterAll(() => destroyTestCluster(c));

  it('prints usage, and refuses a bad kind or target naming the fix', async () => {
    const help = await vsky(['events', '--help']);
    expect(help.exitCode).toBe(0);
    expect(String(help.stdout)).toMatch(/^Usage: vsky events/);
    expect(String(help.stdout)).toMatch(/--follow/);
    const kind = await vsky(['events', '--kind', 'volume.exploded'], c.managerAddress);
    expect(kind.exitCode).toBe(2);
    expect(String(kind.stderr)).toMatch(/unknown event kind "volume.exploded": use one of .*volume.attached/);
    const target = await vsky(['events', '--target', 'vm1'], c.managerAddress);
    expect(target.exitCode).not.toBe(0);
    expect(String(target.stderr)).toMatch(/use volume:NAME/);
  });

  it('lists volume.created and volume.attached (with its epoch) for a volume; servers and heads came up before', async () => {
    const m = c.managerAddress;
    expect((await vsky(['volume', 'create', 'ev1', '--size', '16M', '--replicas', '2', '--thick'], m)).exitCode).toBe(0);
    expect((await vsky(['volume', 'attach', 'ev1'], m)).exitCode).toBe(0);
    const events = await vskyJson<Event[]>(['events', '--target', 'volume:ev1'], m);
    expect(events.map((e) => e.kind)).toEqual(['volume.created', 'volume.attached']);
    expect(events[0]).toMatchObject({ target: 'volume:ev1', reason: 'created', details: { replicas: '2', segments: '1' } });
    expect(events[1]).toMatchObject({ target: 'volume:ev1', details: { head: c.headNames[0], epoch: '1' } });
    expect(events[1]!.seq).toBeGreaterThan(events[0]!.seq);
    expect(Math.abs(events[1]!.timeMs - Date.now())).toBeLessThan(60_000);
    const all = await vskyJson<Event[]>(['events', '--limit', '1000'], m);
    expect(all.filter((e) => e.kind === 'server.added').map((e) => e.target).sort()).toEqual(['server:node1', 'server:node2', 'server:node3']);
    expect(all.some((e) => e.kind === 'head.up')).toBe(true);
    expect(all.map((e) => e.seq)).toEqual([...all.map((e) => e.seq)].sort((a, b) => a - b));
    const table = String((await vsky(['events', '--kind', 'volume'], m)).stdout);
    expect(table).toMatch(/^SEQ\s+TIME\s+KIND\s+TARGET\s+REASON\s+DETAILS/);
    expect(table).toMatch(/\d{4}-\d\d-\d\dT[\d:.]+Z\s+volume\.attached\s+volume:ev1\s+write lease granted to head \S+\s+.*epoch=1/);
  });

  it('--follow prints a new event within a couple of seconds and stops on SIGINT', async () => {
    const m = c.managerAddress;
    const follower = execa(process.execPath, [vskyEntry(), 'events', '--follow', '--json', '--target', 'volume:ev1', '--manager', m, ...c.tlsArgs()], { reject: false });
    const lines: Event[] = [];
    let buf = '';
    follower.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        lines.push(JSON.parse(buf.slice(0, i)) as Event);
        buf = buf.slice(i + 1);
      }
    });
    try {
      await waitFor(() => lines.length >= 2, 10_000); // the newest ones first
      expect(lines.map((e) => e.kind)).toEqual(['volume.created', 'volume.attached']);
      expect((await vsky(['volume', 'detach', 'ev1'], m)).exitCode).toBe(0);
      const t0 = Date.now();
      await waitFor(() => lines.some((e) => e.kind === 'volume.detached'), 3_000);
      expect(Date.now() - t0).toBeLessThan(3_000);
      expect(lines.at(-1)).toMatchObject({ kind: 'volume.detached', target: 'volume:ev1', details: { epoch: '1', force: 'false' } });
    } finally {
      follower.kill('SIGINT');
    }
    const r = await follower;
    expect(r.exitCode).toBe(0);
    expect(String(r.stderr)).toBe('');
    expect((await vsky(['volume', 'delete', 'ev1'], m)).exitCode).toBe(0);
  });

  it('keeps its events and numbering across a manager restart (killed -9); a follower rides it out', async () => {
    const m = c.managerAddress;
    expect((await vsky(['volume', 'create', 'ev2', '--size', '16M', '--thick'], m)).exitCode).toBe(0);
    const before = await vskyJson<Event[]>(['events', '--limit', '10000'], m);
    const follower = execa(process.execPath, [vskyEntry(), 'events', '--follow', '--json', '--target', 'volume:ev2', '--manager', m, ...c.tlsArgs()], { reject: false });
    const lines: Event[] = [];
    follower.stdout!.on('data', (d: Buffer) => {
      for (const l of d.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Event);
    });
    try {
      await waitFor(() => lines.length >= 1, 10_000);
      await c.manager.kill9();
      await c.manager.start();
      await c.waitRegistered();
      const after = await vskyJson<Event[]>(['events', '--limit', '10000', '--after', String(before.at(-1)!.seq - 5)], m);
      expect(after.slice(0, 5)).toEqual(before.slice(-5)); // what was there before the kill is still there
      expect((await vsky(['volume', 'attach', 'ev2'], m)).exitCode).toBe(0);
      await waitFor(() => lines.some((e) => e.kind === 'volume.attached'), 10_000);
      const attached = lines.find((e) => e.kind === 'volume.attached')!;
      expect(attached.seq).toBeGreaterThan(before.at(-1)!.seq);
      expect(lines.map((e) => e.kind)).toEqual(['volume.created', 'volume.attached']);
    } finally {
      follower.kill('SIGINT');
    }
    expect((await follower).exitCode).toBe(0);
    expect((await vsky(['volume', 'detach', 'ev2'], m)).exitCode).toBe(0);
    expect((await vsky(['volume', 'delete', 'ev2'], m)).exitCode).toBe(0);
  });
});

async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
