import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vskyEntry } from '../../deploy/daemon-process.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import { run, tryRun } from '../harness/tools.js';
import { vsky, vskyJson } from '../harness/vsky.js';

// The vsky CLI as an admin or a script uses it: --help everywhere, --json
// output that parses, and a volume's whole life cycle.

const COMMANDS = [
  [], ['cluster', 'up'], ['manager'], ['storage-node'], ['head-agent'], ['status'],
  ['server', 'list'], ['server', 'add'], ['server', 'remove'],
  ['disk', 'list'], ['disk', 'add'], ['disk', 'remove'],
  ['volume', 'create'], ['volume', 'delete'], ['volume', 'list'], ['volume', 'show'], ['volume', 'attach'], ['volume', 'detach'],
  ['volume', 'access'], ['volume', 'handoff'], ['volume', 'wipe'], ['volume', 'resize'], ['volume', 'recon'],
  ['disk', 'fail'], ['server', 'fail'], ['resync', 'list'], ['resync', 'watch'], ['events'],
  ['job', 'list'], ['job', 'show'], ['job', 'abort'], ['job', 'watch'], ['doctor'], ['ca'], ['ca', 'init'], ['ca', 'issue'],
];

describe('vsky --help', () => {
  it('every command prints usage and exits 0', { timeout: 180_000 }, async () => {
    // Four at a time: each run loads the whole CLI (about a second on a busy 2-core machine).
    const results: { cmd: string[]; r: Awaited<ReturnType<typeof vsky>> }[] = [];
    for (let i = 0; i < COMMANDS.length; i += 4) {
      const batch = COMMANDS.slice(i, i + 4);
      results.push(...await Promise.all(batch.map(async (cmd) => ({ cmd, r: await vsky([...cmd, '--help']) }))));
    }
    for (const { cmd, r } of results) {
      expect(r.exitCode, cmd.join(' ')).toBe(0);
      const out = String(r.stdout);
      expect(out, cmd.join(' ')).toMatch(/^Usage: vsky/);
      // Defaults read as a person writes them: sizes in units, no raw byte counts or {} / [].
      const flat = out.replace(/\s+/g, ' ');
      expect(flat, cmd.join(' ')).not.toMatch(/<size>(?:(?! --).)*\(default: \d+\)/);
      expect(flat, cmd.join(' ')).not.toMatch(/\(default: (\{.*?\}|\[\])\)/);
    }
    const up = String((await vsky(['cluster', 'up', '--help'])).stdout).replace(/\s+/g, ' ');
    expect(up).toMatch(/--disk-size <size> size of each disk file \(default: 2 GiB\)/);
    expect(up).toMatch(/--chunk-size <size> chunk \(segment\) size \(default: 256 MiB\)/);
    expect(up).toMatch(/--volume <name:size\[:replicas\]> volume to create and attach \(default: demo:2GiB:3\)/);
  });

  it('head-agent documents its data-path timeouts with units and defaults, and refuses bad ones', async () => {
    const out = String((await vsky(['head-agent', '--help'])).stdout).replace(/\s+/g, ' ');
    expect(out).toMatch(/--data-timeout <ms> milliseconds a storage node may send nothing .*\(default: 2000\)/);
    expect(out).toMatch(/--flush-timeout <ms> milliseconds one data request may stay unanswered .*\(default: 30000\)/);
    expect(out).toMatch(/--stale-report-timeout <ms> milliseconds a write waits .*\(default: 10000\)/);
    for (const bad of [['--data-timeout', '0'], ['--flush-timeout', '2s']]) {
      const r = await vsky(['head-agent', '--data-dir', '/nonexistent/vsky-cli-test', ...bad]);
      expect(r.exitCode, bad.join(' ')).not.toBe(0);
      expect(String(r.stderr), bad.join(' ')).toMatch(new RegExp(`${bad[0]}`));
    }
  });
});

describe('vsky admin commands against a running cluster', () => {
  let c: LocalCluster;
  beforeAll(async () => { c = await startTestCluster(); });
  afterAll(() => destroyTestCluster(c));

  it('lists servers, disks and heads as JSON', async () => {
    const m = c.managerAddress;
    const servers = await vskyJson<{ name: string; state: string; labels: Record<string, string> }[]>(['server', 'list'], m);
    expect(servers.map((s) => s.name).sort()).toEqual(['node1', 'node2', 'node3']);
    expect(servers.every((s) => s.state === 'active')).toBe(true);
    expect(servers.find((s) => s.name === 'node1')!.labels).toEqual({ rack: 'r1' });
    const disks = await vskyJson<{ state: string; chunkCount: number }[]>(['disk', 'list'], m);
    expect(disks).toHaveLength(6);
    expect(disks.every((d) => d.state === 'active' && d.chunkCount > 0)).toBe(true);
    const table = await vsky(['server', 'list'], m);
    expect(String(table.stdout)).toMatch(/NAME\s+ID\s+STATE/);
    // Nothing to watch: a plain sentence, no empty progress-bar template.
    const watch = await vsky(['resync', 'watch'], m);
    expect(watch.exitCode).toBe(0);
    expect(String(watch.stdout).trim()).toBe('no resync running: every volume is fully redundant');
    expect(String(watch.stderr)).not.toMatch(/\{name\}|\{bar\}/);
  });

  it('creates, shows, attaches, detaches and deletes a volume', async () => {
    const m = c.managerAddress;
    const v = await vskyJson<{ name: string; segmentCount: number; replicas: number }>(['volume', 'create', 'life', '--size', '40M', '--replicas', '2', '--thick'], m);
    expect(v).toMatchObject({ name: 'life', segmentCount: 3, replicas: 2 });
    const shown = await vskyJson<{ map: { segments: { replicas: { serverId: string }[] }[] } }>(['volume', 'show', 'life'], m);
    expect(shown.map.segments).toHaveLength(3);
    for (const s of shown.map.segments) {
      expect(new Set(s.replicas.map((r) => r.serverId)).size).toBe(2);
    }
    const attach = await vsky(['volume', 'attach', 'life'], m);
    expect(attach.exitCode).toBe(0);
    const uri = String(attach.stdout).split('\n')[0]!;
    expect(uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/life$/);
    const size = await run('nbdinfo', ['--size', uri]);
    expect(Number(String(size.stdout).trim())).toBe(40 * MiB);
    const busy = await vsky(['volume', 'delete', 'life'], m);
    expect(busy.exitCode).not.toBe(0);
    expect(String(busy.stderr)).toMatch(/detach/);
    expect((await vsky(['volume', 'detach', 'life'], m)).exitCode).toBe(0);
    expect((await vsky(['volume', 'delete', 'life'], m)).exitCode).toBe(0);
    const list = await vskyJson<unknown[]>(['volume', 'list'], m);
    expect(list).toHaveLength(0);
    const status = await vskyJson<{ usedBytes: number; serversActive: number }>(['status'], m);
    expect(status.serversActive).toBe(3);
    expect(status.usedBytes).toBe(0);
  });

  it('adds and removes a disk; removing a server that holds chunks drains it, waits saying why, and disk add cancels', async () => {
    const m = c.managerAddress;
    const path = join(c.opts.dir, 'node1', 'extra.img');
    const added = await vskyJson<{ diskId: string; chunkCount: number; serverName: string }>(['disk', 'add', 'node1', path, '--size', '128M'], m);
    expect(added).toMatchObject({ serverName: 'node1', chunkCount: 128 / 16 - 1 });
    expect(await vskyJson<unknown[]>(['disk', 'list', '--server', 'node1'], m)).toHaveLength(3);
    expect((await vsky(['disk', 'remove', added.diskId], m)).exitCode).toBe(0);
    const after = await vskyJson<{ diskId: string; state: string }[]>(['disk', 'list'], m);
    expect(after.find((d) => d.diskId === added.diskId)?.state ?? 'removed').toBe('removed');

    expect((await vsky(['volume', 'create', 'pin', '--size', '16M', '--thick'], m)).exitCode).toBe(0);
    // Three servers, three replicas: no other server can take node2's replicas, so the drain waits and says why.
    const drain = await vskyJson<{ name: string; state: string; draining: boolean }>(['server', 'remove', 'node2', '--no-wait'], m);
    expect(drain).toMatchObject({ name: 'node2', state: 'active', draining: true });
    type Row = { diskId: string; serverName: string; path: string; state: string; draining: boolean; drainNote: string };
    const node2 = async () => (await vskyJson<Row[]>(['disk', 'list', '--server', 'node2'], m)).filter((d) => d.state !== 'removed');
    await waitFor(async () => (await node2()).some((d) => /add a server or disk/.test(d.drainNote)), 10_000);
    const table = await vsky(['disk', 'list'], m);
    expect(String(table.stdout)).toMatch(/active,draining/);
    expect(String((await vsky(['status'], m)).stdout)).toMatch(/draining: disk \S+ on node2, 1 chunk\(s\) left - waiting: .*add a server or disk/);
    const st = await vskyJson<{ drainingDisks: { serverName: string; chunksLeft: number }[] }>(['status'], m);
    expect(st.drainingDisks.length).toBeGreaterThan(0);
    expect(st.drainingDisks.every((d) => d.serverName === 'node2')).toBe(true);
    // Adding the disks again cancels the drain.
    for (const d of await node2()) expect((await vsky(['disk', 'add', 'node2', d.path], m)).exitCode).toBe(0);
    expect((await node2()).every((d) => !d.draining)).toBe(true);
    expect((await vskyJson<{ name: string; draining: boolean }[]>(['server', 'list'], m)).find((s) => s.name === 'node2')!.draining).toBe(false);
    expect((await vsky(['volume', 'delete', 'pin'], m)).exitCode).toBe(0);
  });

  it('exits quietly when its output pipe is closed (`vsky ... | head -1`)', { timeout: 120_000 }, async () => {
    const m = c.managerAddress;
    expect((await vsky(['volume', 'create', 'piped', '--size', '40M', '--thick'], m)).exitCode).toBe(0);
    try {
      const commands = [
        ['volume', 'show', 'piped'], ['volume', 'show', 'piped', '--json'], ['disk', 'list'], ['events', '--limit', '1000'], ['volume', '--help'],
      ];
      for (const cmd of commands) {
        // The reader is gone before vsky writes a byte: every write meets EPIPE.
        const r = await vskyIntoClosedPipe([...cmd, '--manager', m, ...c.tlsArgs()]);
        expect(r, cmd.join(' ')).toEqual({ code: 0, signal: null, stderr: '' });
      }
      // What a person types: the first line arrives, nothing else is printed.
      const shell = await tryRun('bash', ['-c', `"${process.execPath}" "${vskyEntry()}" volume show piped --manager ${m} ${c.tlsArgs().join(' ')} | head -1; exit \${PIPESTATUS[0]}`]);
      expect(shell.exitCode).toBe(0);
      expect(String(shell.stdout)).toMatch(/piped/);
      expect(String(shell.stderr)).toBe('');
    } finally {
      await vsky(['volume', 'delete', 'piped'], m);
    }
  });

  it('marks a silent server failed and active again when it heartbeats', async () => {
    const m = c.managerAddress;
    const state = async (): Promise<string | undefined> =>
      (await vskyJson<{ name: string; state: string }[]>(['server', 'list'], m)).find((s) => s.name === 'node3')?.state;
    c.nodes[2]!.pause();
    try {
      await waitFor(async () => (await state()) === 'failed', 10_000);
    } finally {
      c.nodes[2]!.resume();
    }
    await waitFor(async () => (await state()) === 'active', 10_000);
  });
});

/** Runs vsky with its stdout a pipe whose read end is closed at once; resolves with how it ended. */
function vskyIntoClosedPipe(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [vskyEntry(), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`vsky ${args.join(' ')} did not exit`)); }, 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stderr }); });
  });
}

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
