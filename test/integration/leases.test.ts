import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { call } from '../../shared/grpc.js';
import { destroyTestCluster, startTestCluster } from '../harness/cluster.js';
import {
  BLOCK, StampWriter, daemonLog, everyReplica, launchHead, leaseView, managerLog, median, showVolume, sleep, stampOf, stampedBlock,
  waitHeadActive, waitUntil, type StartedHead,
} from '../harness/leases.js';
import { NbdClient } from '../harness/nbd-client.js';
import { expectReplicasEqual } from '../harness/replicas.js';
import { TcpProxy } from '../harness/tcp-proxy.js';
import { vsky } from '../harness/vsky.js';

// Write leases between two heads (docs/leases.md), real processes on
// loopback, a short lease TTL so expiry-based take-overs stay fast. Rule 3
// (one writer): every test checks that its fault really happened (a process
// killed or stopped, a link cut, the manager's view of the lease), that the
// lease moved the way the rules say (epoch, holder, standby), and that the
// old holder cannot get one write onto storage afterwards (its writes fail,
// its old epoch is refused by every replica node, the bytes are the new
// holder's).

const TTL_MS = 2000;
const HEARTBEAT_MS = 300;
const SIZE = 32 * MiB; // 2 segments of 16 MiB in a test cluster
const SEG = 16 * MiB;

describe('write leases: hand-off, ping-pong, take-over, fencing', () => {
  let c: LocalCluster;

  beforeAll(async () => {
    c = await startTestCluster({ heads: 2, managerArgs: ['--lease-ttl', String(TTL_MS)], heartbeatIntervalMs: HEARTBEAT_MS });
  });
  afterAll(async () => {
    c?.head.resume();
    await destroyTestCluster(c);
  });

  const grpc = async <T>(fn: (m: ReturnType<LocalCluster['client']>) => Promise<T>): Promise<T> => {
    const m = c.client();
    try {
      return await fn(m);
    } finally {
      m.close();
    }
  };
  const create = (name: string): Promise<unknown> => grpc((m) => call(m, 'CreateVolume', { name, size: SIZE, replicas: 3, spreadLabel: '', thick: true }, 60_000));
  const attach = async (name: string, head: string, migrate = false): Promise<string> => {
    const r = await grpc((m) => call(m, 'AttachVolume', { name, head, migrate, force: false }, 30_000));
    return r.nbdUri;
  };
  const detachAll = (name: string): Promise<unknown> => grpc((m) => call(m, 'DetachVolume', { name, force: true, head: '' }, 30_000)).catch(() => undefined);
  const headUri = (n: number, volume: string): string => `nbd://${c.headEndpoints[n - 1]!.nbd}/${volume}`;

  it('hand-off: the standby\'s first write takes the lease; every replica refuses the old epoch', async () => {
    const name = 'la';
    await create(name);
    const uri1 = await attach(name, 'head1');
    const uri2 = await attach(name, 'head2', true);
    expect(new URL(uri2).host).toBe(c.headEndpoints[1]!.nbd);
    const before = await leaseView(c, name);
    expect(before).toMatchObject({ holder: 'head1', standby: 'head2', nbdUri: uri1, standbyNbdUri: uri2 });

    const nbd1 = await NbdClient.connect(uri1);
    const nbd2 = await NbdClient.connect(uri2);
    try {
      const A = Buffer.alloc(64 * 1024, 0xa1);
      const B = Buffer.alloc(64 * 1024, 0xb2);
      const at = [0, SEG - 32 * 1024]; // the second one crosses into segment 1
      for (const off of at) await nbd1.write(off, A);
      await nbd1.flush();
      expect(await leaseView(c, name), 'writes on the holder do not move the lease').toEqual(before);

      const t0 = performance.now();
      await nbd2.write(at[0]!, B);
      const firstWriteMs = performance.now() - t0;
      await nbd2.write(at[1]!, B);
      await nbd2.flush();
      const after = await leaseView(c, name);
      expect(after.epoch, 'the hand-off issued a new epoch').toBe(before.epoch + 1);
      expect(after).toMatchObject({ holder: 'head2', standby: 'head1', nbdUri: uri2, standbyNbdUri: uri1 });
      expect(managerLog(c)).toMatch(/"volume":"la".*write lease handed off/);
      console.log(`hand-off: first write on the standby acknowledged after ${firstWriteMs.toFixed(1)} ms`);

      // The old holder's epoch, as a late write from it would carry, on every replica of both segments.
      for (const segment of [0, 1]) {
        const stale = await everyReplica(c, name, segment, { op: 'write', epoch: before.epoch, offset: 0, data: Buffer.alloc(BLOCK, 0xee) });
        expect(stale.length).toBe(3);
        for (const r of stale) expect(r.status, `segment ${segment} slot ${r.slot} at ${r.dataAddress}: ${r.message}`).toBe('STALE_EPOCH');
        // Premise: the same request with the holder's epoch is accepted (the refusal is the epoch rule, not a bad request).
        const current = Buffer.from(segment === 0 ? B.subarray(0, BLOCK) : B.subarray(32 * 1024, 32 * 1024 + BLOCK));
        const ok = await everyReplica(c, name, segment, { op: 'write', epoch: after.epoch, offset: 0, data: current });
        for (const r of ok) expect(r.status, `segment ${segment} slot ${r.slot}: ${r.message}`).toBe('OK');
        const back = await everyReplica(c, name, segment, { op: 'read', offset: 0, length: 32 * 1024 });
        for (const r of back) expect(r.data.equals(B.subarray(0, 32 * 1024)), `segment ${segment} slot ${r.slot} holds the new holder's bytes`).toBe(true);
      }
      const tail = await everyReplica(c, name, 0, { op: 'read', offset: SEG - 32 * 1024, length: 32 * 1024 });
      for (const r of tail) expect(r.data.equals(B.subarray(0, 32 * 1024))).toBe(true);

      // Both heads read B (a read on head1, now the standby, takes the lease back).
      for (const off of at) expect((await nbd2.read(off, B.length)).equals(B)).toBe(true);
      for (const off of at) expect((await nbd1.read(off, B.length)).equals(B)).toBe(true);
      const back = await leaseView(c, name);
      expect(back).toMatchObject({ holder: 'head1', standby: 'head2', epoch: after.epoch + 1 });

      // The explicit forms: `vsky volume handoff` moves the lease now; `detach --head` of the holder hands it over first.
      const h = await vsky(['volume', 'handoff', name, '--to', 'head2'], c.managerAddress);
      expect(h.exitCode, String(h.stderr)).toBe(0);
      expect(String(h.stdout)).toMatch(/write lease now held by head2 with epoch \d+ \(handed off in \d+ ms\)/);
      const handed = await leaseView(c, name);
      expect(handed).toMatchObject({ holder: 'head2', standby: 'head1', epoch: back.epoch + 1 });
      await nbd2.write(0, A); // head2 holds it already: no move
      expect((await leaseView(c, name)).epoch).toBe(handed.epoch);
      const d = await vsky(['volume', 'detach', name, '--head', 'head2'], c.managerAddress);
      expect(d.exitCode, String(d.stderr)).toBe(0);
      expect(await leaseView(c, name)).toEqual({ holder: 'head1', standby: '', epoch: handed.epoch + 1, nbdUri: uri1, standbyNbdUri: '' });
      expect((await nbd1.read(0, A.length)).equals(A), 'head2\'s last write, read on head1').toBe(true);
      await expect(nbd2.write(0, B), 'head2 let the volume go').rejects.toThrow();
      expect((await leaseView(c, name)).holder).toBe('head1');
    } finally {
      nbd1.close();
      nbd2.close();
      await detachAll(name);
    }
  });

  it('ping-pong: writes alternating between the heads lose nothing, every read returns the latest', async () => {
    const name = 'lb';
    await create(name);
    const uris = [await attach(name, 'head1'), await attach(name, 'head2', true)];
    const clients = [await NbdClient.connect(uris[0]!), await NbdClient.connect(uris[1]!)];
    const start = await leaseView(c, name);
    const BLOCKS = 512; // half in segment 0, half in segment 1
    const offsetOf = (b: number): number => (b < BLOCKS / 2 ? b * BLOCK : SEG + (b - BLOCKS / 2) * BLOCK);
    const acked = new Map<number, number>(); // block -> seq of its last acknowledged write
    let seq = 0;
    let x = 12345;
    const rnd = (n: number): number => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x % n; };
    const violations: string[] = [];
    const check = async (client: NbdClient, b: number, where: string): Promise<void> => {
      const got = stampOf(await client.read(offsetOf(b), BLOCK));
      const want = acked.get(b);
      const seen = got === undefined ? undefined : got === 'garbage' ? -1 : got.block === b ? got.seq : -2;
      if (seen !== want) violations.push(`${where}: block ${b} read seq ${seen}, last acknowledged ${want}`);
    };
    const write = async (client: NbdClient, b: number): Promise<void> => {
      const s = ++seq;
      await client.write(offsetOf(b), stampedBlock(7, b, s));
      acked.set(b, s);
    };
    const switchWriteMs: number[] = [];
    const switchReadMs: number[] = [];
    let turns = 0;
    const deadline = Date.now() + 10_000;
    try {
      while (Date.now() < deadline) {
        const side = turns % 2;
        const client = clients[side]!;
        const where = `turn ${turns} on head${side + 1}`;
        const t0 = performance.now();
        if (turns > 0 && turns % 4 === 0) { // a read moves the lease too
          await check(client, rnd(BLOCKS), where);
          switchReadMs.push(performance.now() - t0);
          await write(client, rnd(BLOCKS));
        } else {
          await write(client, rnd(BLOCKS));
          if (turns > 0) switchWriteMs.push(performance.now() - t0);
        }
        const burst = new Set<number>();
        while (burst.size < 3) burst.add(rnd(BLOCKS));
        await Promise.all([...burst].map((b) => write(client, b)));
        await check(client, [...burst][0]!, where);
        await check(client, rnd(BLOCKS), where);
        turns++;
      }
      const end = await leaseView(c, name);
      const handoffs = turns - 1;
      const stats = (xs: number[]): string => `median ${median(xs).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms`;
      console.log(`ping-pong: ${handoffs} hand-offs in 10 s, ${seq} writes; first write after a switch: ${stats(switchWriteMs)} `
        + `(${switchWriteMs.length}); first read after a switch: ${stats(switchReadMs)} (${switchReadMs.length})`);
      expect(violations).toEqual([]);
      expect(handoffs).toBeGreaterThan(20);
      expect(end.epoch - start.epoch, 'every switch moved the lease (one new epoch each)').toBe(handoffs);
      expect(end.holder).toBe(`head${((turns - 1) % 2) + 1}`);
      // None fell back to waiting out the lease (that takes the TTL).
      expect(Math.max(...switchWriteMs, ...switchReadMs)).toBeLessThan(TTL_MS);

      // Every block, through both heads, then every replica on its own.
      for (const client of clients) {
        for (let b = 0; b < BLOCKS; b++) await check(client, b, 'final');
      }
      expect(violations).toEqual([]);
      await clients[0]!.flush();
      await expectReplicasEqual(c, name, 3);
    } finally {
      for (const cl of clients) cl.close();
      await detachAll(name);
    }
  });

  it('kill -9 of the holder: a write on the standby takes over within TTL + 1 s; earlier data is intact', async () => {
    const name = 'lc';
    await create(name);
    const uri1 = await attach(name, 'head1');
    const uri2 = await attach(name, 'head2', true);
    const nbd1 = await NbdClient.connect(uri1);
    // 128 KiB inside one 4 MiB write-intent group (not at its start: no groups marked ahead), so the
    // take-over reconciles one group; what a larger dirty set costs is measured by test/bench/leases.ts.
    const base = 1 * MiB;
    const before: Buffer[] = [];
    for (let b = 0; b < 32; b++) {
      before.push(stampedBlock(1, b, 1));
      await nbd1.write(base + b * BLOCK, before[b]!);
    }
    await nbd1.flush();
    const held = await leaseView(c, name);
    expect(held).toMatchObject({ holder: 'head1', standby: 'head2' });
    const nbd2 = await NbdClient.connect(uri2);
    try {
      const pid = c.head.pid;
      const killed = performance.now();
      await c.head.kill9();
      expect(c.head.running, `head1 (pid ${pid}) is dead`).toBe(false);
      await nbd2.write(8 * MiB, stampedBlock(2, 0, 1));
      const tookMs = performance.now() - killed;
      const reconciled = /"volume":"lc","segments":\d+,"regions":\d+,"bytes":(\d+),"msg":"reconciled regions/.exec(daemonLog(c, 'head2'));
      console.log(`kill -9 take-over: first write on the standby acknowledged ${tookMs.toFixed(0)} ms after the kill (TTL ${TTL_MS} ms; `
        + `${reconciled ? Number(reconciled[1]) / MiB : 0} MiB reconciled)`);
      // It waited for the expiry (the lease was renewed at most a heartbeat before the kill), and not much longer.
      expect(tookMs).toBeGreaterThan(TTL_MS - HEARTBEAT_MS - 200);
      expect(tookMs).toBeLessThan(TTL_MS + 1000);
      const after = await leaseView(c, name);
      expect(after.epoch).toBeGreaterThan(held.epoch);
      expect(after).toMatchObject({ holder: 'head2', standby: '' }); // the dead holder is dropped
      expect(managerLog(c)).toMatch(/"volume":"lc".*write lease taken over after the holder's lease expired/);
      const got = await nbd2.read(base, 32 * BLOCK);
      for (let b = 0; b < 32; b++) expect(got.subarray(b * BLOCK, (b + 1) * BLOCK).equals(before[b]!), `block ${b}`).toBe(true);
      for (const r of await everyReplica(c, name, 0, { op: 'write', epoch: held.epoch, offset: 0, data: Buffer.alloc(BLOCK) })) {
        expect(r.status).toBe('STALE_EPOCH');
      }
      await nbd2.flush();
      await expectReplicasEqual(c, name, 3);
    } finally {
      nbd1.close();
      nbd2.close();
      await detachAll(name);
      await c.head.start();
      await waitHeadActive(c, 'head1');
    }
  });

  it('SIGSTOP of the holder with writes in flight: after the take-over none of its writes lands, its client gets errors', async () => {
    const name = 'ld';
    await create(name);
    const uri1 = await attach(name, 'head1');
    const uri2 = await attach(name, 'head2', true);
    const REGION = 64; // blocks 0..63, written by both heads
    const nbd1 = await NbdClient.connect(uri1);
    const nbd2 = await NbdClient.connect(uri2);
    const w1 = new StampWriter(nbd1, { tag: 1, blocks: REGION, queueDepth: 4 });
    w1.start();
    const probes: Promise<boolean>[] = [];
    try {
      await waitUntil(() => w1.acked >= 50, 10_000, 'head1 acknowledging writes');
      const held = await leaseView(c, name);
      c.head.pause();
      const paused = performance.now();
      await sleep(200); // replies already on their way when it stopped have arrived by now
      const inFlight = w1.writes.filter((w) => w.settled === undefined);
      expect(inFlight.length, 'writes were in flight on the stopped head').toBeGreaterThan(0);
      expect(w1.writes.filter((w) => w.settled !== undefined && w.settled > paused + 100), 'nothing settles while head1 is stopped').toEqual([]);
      // Writes sent to head1 while it is stopped: they wait in its socket, unseen, until SIGCONT.
      for (let i = 0; i < 4; i++) {
        const b = REGION + i;
        probes.push(nbd1.write(b * BLOCK, stampedBlock(1, b, 1_000_000 + i)).then(() => true, () => false));
      }

      // A write on the standby takes over (the stopped holder cannot release: the manager waits its lease out).
      await nbd2.write(1000 * BLOCK, stampedBlock(2, 1000, 1));
      const tookOver = performance.now();
      const after = await leaseView(c, name);
      expect(after.epoch).toBeGreaterThan(held.epoch);
      expect(after).toMatchObject({ holder: 'head2', standby: '' }); // the old holder is dropped
      console.log(`SIGSTOP take-over: the standby's write was acknowledged ${(tookOver - paused).toFixed(0)} ms after the stop`);
      // What storage holds at the take-over, then head2 overwrites the region and the probes' blocks.
      const atTakeOver = await nbd2.read(0, REGION * BLOCK);
      const B = Buffer.concat(Array.from({ length: REGION + 4 }, (_, b) => stampedBlock(2, b, 1)));
      await nbd2.write(0, B);
      await nbd2.flush();

      c.head.resume();
      const resumed = performance.now();
      await sleep(1500);
      await w1.stop();
      const probeOk = await Promise.all(probes);

      const later = w1.writes.filter((w) => w.issued >= resumed);
      const summary = (ws: typeof inFlight): string => `${ws.length} (${ws.filter((w) => w.ok).length} acknowledged; `
        + `errors: ${[...new Set(ws.filter((w) => !w.ok).map((w) => w.error))].join(', ') || 'none'})`;
      console.log(`SIGSTOP: head1's writes in flight at the stop ${summary(inFlight)}; sent while stopped ${probeOk.length} `
        + `(${probeOk.filter(Boolean).length} acknowledged); sent after SIGCONT ${summary(later)}`);
      // A write in flight at the stop may only be acknowledged if it had reached every replica before the take-over.
      for (const w of inFlight.filter((x) => x.ok)) {
        const s = stampOf(atTakeOver.subarray(w.block * BLOCK, (w.block + 1) * BLOCK));
        expect(s, `block ${w.block}: write seq ${w.seq} was acknowledged after the take-over but was not on storage at the take-over`)
          .toMatchObject({ tag: 1, block: w.block, seq: w.seq });
      }
      expect(probeOk, 'a write sent to the stopped holder was acknowledged').toEqual([false, false, false, false]);
      expect(later.length, 'head1\'s client kept trying after SIGCONT').toBeGreaterThan(0);
      expect(later.filter((w) => w.ok), 'a write on the old holder was acknowledged after the take-over').toEqual([]);
      expect(c.head.running).toBe(true); // refused, not crashed

      // Every byte of the region is head2's: on head2, and on every replica on its own.
      expect((await nbd2.read(0, B.length)).equals(B)).toBe(true);
      for (const r of await everyReplica(c, name, 0, { op: 'read', offset: 0, length: B.length })) {
        expect(r.data.equals(B), `replica slot ${r.slot} at ${r.dataAddress} holds a write of the old holder`).toBe(true);
      }
    } finally {
      c.head.resume();
      await w1.stop();
      await Promise.all(probes);
      nbd1.close();
      nbd2.close();
      await detachAll(name);
    }
  });

  it('a holder cut off from the manager keeps writing past the TTL, and not once after another head took over', async () => {
    const name = 'le';
    await create(name);
    const proxy = await TcpProxy.start(c.managerAddress);
    let hx: StartedHead | undefined;
    let nbdx: NbdClient | undefined;
    let wx: StampWriter | undefined;
    try {
      hx = await launchHead(c, 'hx', { manager: proxy.address });
      const urix = await attach(name, 'hx');
      expect(new URL(urix).host).toBe(hx.nbd);
      nbdx = await NbdClient.connect(urix);
      const REGION = 64;
      wx = new StampWriter(nbdx, { tag: 9, blocks: REGION, queueDepth: 2, pauseMs: 5 });
      wx.start();
      await waitUntil(() => wx!.acked >= REGION, 10_000, 'hx acknowledging writes');
      const held = await leaseView(c, name);
      expect(held.holder).toBe('hx');

      proxy.cut();
      const cut = performance.now();
      await sleep(TTL_MS + 1000);
      const afterCut = wx.writes.filter((w) => w.issued > cut && w.settled !== undefined);
      expect(afterCut.length).toBeGreaterThan(20);
      expect(afterCut.filter((w) => !w.ok), 'I/O does not need the manager').toEqual([]);
      expect((await showVolume(c, name)).info.lease, 'the manager judged hx\'s lease expired').toBe('expired');
      expect(proxy.refused, 'hx tried to reach the manager and was refused').toBeGreaterThan(0);
      console.log(`cut-off holder: ${afterCut.length} writes acknowledged in ${(TTL_MS + 1000) / 1000} s after the cut; `
        + `${proxy.refused} connection attempts to the manager refused`);

      // Another head takes over while hx keeps writing.
      const take = await vsky(['volume', 'attach', name, '--head', 'head2'], c.managerAddress);
      const tookOver = performance.now();
      expect(take.exitCode, String(take.stderr)).toBe(0);
      const uri2 = String(take.stdout).split('\n')[0]!;
      const after = await leaseView(c, name);
      expect(after.epoch).toBeGreaterThan(held.epoch);
      expect(after).toMatchObject({ holder: 'head2', standby: '' });
      await sleep(500);
      await wx.stop();

      // Not one write of the cut-off head succeeds from now on.
      const later = wx.writes.filter((w) => w.issued >= tookOver);
      expect(later.length, 'hx kept trying after the take-over').toBeGreaterThan(0);
      expect(later.filter((w) => w.ok), 'a write of the cut-off head was acknowledged after the take-over').toEqual([]);
      await expect(nbdx.write(0, stampedBlock(9, 0, 0xffffff)), 'its next write fails').rejects.toThrow();
      for (const r of await everyReplica(c, name, 0, { op: 'write', epoch: held.epoch, offset: 0, data: Buffer.alloc(BLOCK) })) {
        expect(r.status).toBe('STALE_EPOCH');
      }
      // Each block holds its last acknowledged write, or one of hx's failed writes sent before the
      // take-over completed (it may have reached the nodes before their fence); never a later one.
      const lastAcked = wx.lastAcked();
      const bySeq = new Map(wx.writes.map((w) => [w.seq, w]));
      const nbd2 = await NbdClient.connect(uri2);
      try {
        const got = await nbd2.read(0, REGION * BLOCK);
        for (let b = 0; b < REGION; b++) {
          const s = stampOf(got.subarray(b * BLOCK, (b + 1) * BLOCK));
          const floor = lastAcked.get(b)!;
          const what = `block ${b}: ${JSON.stringify(s)}, last acknowledged seq ${floor}`;
          expect(s !== undefined && s !== 'garbage' && s.tag === 9 && s.block === b, what).toBe(true);
          const seq = (s as { seq: number }).seq;
          expect(seq, `${what} (an acknowledged write was lost)`).toBeGreaterThanOrEqual(floor);
          if (seq > floor) expect(bySeq.get(seq)!.issued, `${what}: written after the take-over`).toBeLessThan(tookOver);
        }
      } finally {
        nbd2.close();
      }
      await expectReplicasEqual(c, name, 3);
      const how = daemonLog(c, 'hx');
      console.log(`cut-off holder: ${wx.writes.filter((w) => w.ok).length} writes acknowledged in all, `
        + `${later.length} refused after the take-over; on hx: ${/"msg":"volume fenced/.test(how) ? 'volume fenced (STALE_EPOCH)' : 'not fenced'}, `
        + `${/"force":true,"msg":"volume detached"/.test(how) ? 'dropped by the manager (forced detach over its control port)' : 'not dropped'}`);
    } finally {
      await wx?.stop();
      nbdx?.close();
      await detachAll(name);
      proxy.heal();
      await hx?.daemon.stop();
      await proxy.close();
    }
  });

  it('bad lease requests through the CLI fail with a clear message and change nothing', async () => {
    const m = c.managerAddress;
    const name = 'lf';
    await create(name);
    await create('lf-free');
    await attach(name, 'head1');
    await attach(name, 'head2', true);
    const head3 = await launchHead(c, 'head3');
    try {
      const cases: { args: string[]; message: RegExp }[] = [
        { args: ['volume', 'handoff', name, '--to', 'no-such-head'], message: /no-such-head/ },
        { args: ['volume', 'handoff', name, '--to', 'head1'], message: /head1 already holds lf/ },
        { args: ['volume', 'handoff', name, '--to', 'head3'], message: /not attached to head head3.*--migrate/ },
        { args: ['volume', 'attach', name, '--head', 'head3', '--migrate'], message: /already attached to head1 and head2.*one migration at a time/ },
        { args: ['volume', 'attach', name, '--head', 'head1', '--migrate'], message: /head1 already holds lf/ },
        { args: ['volume', 'attach', name, '--head', 'head2'], message: /head head2 is the standby of lf.*vsky volume handoff lf --to head2/ },
        { args: ['volume', 'detach', name, '--head', 'head3'], message: /not attached to head head3.*held by head1.*standby head2.*nothing changed/ },
        { args: ['volume', 'attach', 'lf-free', '--head', 'head2', '--migrate'], message: /lf-free is not attached: attach it to the migration's source first/ },
        { args: ['volume', 'handoff', 'lf-free', '--to', 'head2'], message: /lf-free/ },
        { args: ['volume', 'handoff', 'no-such-volume', '--to', 'head2'], message: /no-such-volume/ },
      ];
      // All refused, so they may run at once (each CLI run is a node process start: seconds in sequence).
      const before = [await leaseView(c, name), await leaseView(c, 'lf-free')];
      const results = await Promise.all(cases.map((k) => vsky(k.args, m)));
      cases.forEach((k, i) => {
        const r = results[i]!;
        const what = `vsky ${k.args.join(' ')}`;
        expect(r.exitCode, `${what} must fail`).not.toBe(0);
        expect(String(r.stderr), what).toMatch(k.message);
        expect(String(r.stderr), `${what}: one clear line, no stack trace`).not.toMatch(/\n\s+at /);
      });
      expect([await leaseView(c, name), await leaseView(c, 'lf-free')], 'a refused request changed a volume').toEqual(before);
      expect(before[0]).toMatchObject({ holder: 'head1', standby: 'head2' });
      expect(before[1]).toMatchObject({ holder: '', standby: '' });
      for (const d of [c.manager, ...c.heads, ...c.nodes, head3.daemon]) expect(d.running, `${d.name} still runs`).toBe(true);
    } finally {
      await detachAll(name);
      await head3.daemon.stop();
    }
  });

  it('a take-over is refused before the lease expired (with the seconds left), allowed after; --force is allowed and logged', async () => {
    const m = c.managerAddress;
    const name = 'lg';
    await create(name);
    const uri1 = await attach(name, 'head1');
    const refused = await vsky(['volume', 'attach', name, '--head', 'head2'], m);
    const before = await leaseView(c, name);
    expect(refused.exitCode).not.toBe(0);
    const left = /held by head head1, whose lease was renewed ([\d.]+) s ago: a take-over is allowed in ([\d.]+) s/.exec(String(refused.stderr));
    expect(left, String(refused.stderr)).not.toBeNull();
    expect(Number(left![2])).toBeGreaterThan(0);
    expect(Number(left![2])).toBeLessThanOrEqual(TTL_MS / 1000);
    expect(before.holder).toBe('head1');

    c.head.pause();
    const paused = performance.now();
    try {
      // Over gRPC, not the CLI: spawning a CLI process can take longer than the 2 s TTL on a loaded machine.
      const mc = c.client();
      const early = await call(mc, 'AttachVolume', { name, head: 'head2' }, 10_000).then(() => undefined, (err: unknown) => err).finally(() => mc.close());
      expect(early, 'refused while head1\'s lease is still live').toBeInstanceOf(Error);
      expect(String(early)).toMatch(/take-over is allowed in [\d.]+ s/);
      expect(performance.now() - paused, 'premise: asked within the TTL').toBeLessThan(TTL_MS);
      expect(await leaseView(c, name)).toEqual(before);
      await waitUntil(async () => {
        const mc = c.client();
        try { return (await call(mc, 'ShowVolume', { name })).info!.lease === 'expired'; } finally { mc.close(); }
      }, 10_000, 'the lease to expire', 50);
      const expiredAfter = performance.now() - paused;
      expect(expiredAfter, 'the lease lasted its TTL after the last heartbeat').toBeGreaterThan(TTL_MS - HEARTBEAT_MS - 200);
      const late = await vsky(['volume', 'attach', name, '--head', 'head2'], m);
      expect(late.exitCode, String(late.stderr)).toBe(0);
      const after = await leaseView(c, name);
      expect(after.epoch).toBeGreaterThan(before.epoch);
      expect(after.holder).toBe('head2');
      expect(managerLog(c)).toMatch(/"volume":"lg".*take-over: the holder's lease expired/);
    } finally {
      c.head.resume();
    }
    const nbd1 = await NbdClient.connect(uri1).catch(() => undefined); // the old holder: dropped or fenced
    if (nbd1) {
      await expect(nbd1.write(0, Buffer.alloc(BLOCK, 1))).rejects.toThrow();
      nbd1.close();
    }
    await detachAll(name);

    // --force before expiry: allowed, and the manager says so at warn level.
    const forced = 'lg-force';
    await create(forced);
    const urif = await attach(forced, 'head1');
    const nbdf = await NbdClient.connect(urif);
    await nbdf.write(0, Buffer.alloc(BLOCK, 3));
    try {
      const plain = await vsky(['volume', 'attach', forced, '--head', 'head2'], m);
      expect(plain.exitCode, 'head1 is alive and renewing: a plain take-over is refused').not.toBe(0);
      const f = await vsky(['volume', 'attach', forced, '--head', 'head2', '--force'], m);
      expect(f.exitCode, String(f.stderr)).toBe(0);
      expect((await leaseView(c, forced)).holder).toBe('head2');
      const line = managerLog(c).split('\n').find((l) => l.includes('"volume":"lg-force"') && l.includes('FORCED'));
      expect(line, 'the manager logs the forced take-over').toBeDefined();
      expect(JSON.parse(line!)).toMatchObject({ from: 'head1', to: 'head2', forced: true });
      await expect(nbdf.write(0, Buffer.alloc(BLOCK, 4)), 'the forced-out holder cannot write').rejects.toThrow();
      const nbd2 = await NbdClient.connect(headUri(2, forced));
      try {
        expect((await nbd2.read(0, BLOCK)).equals(Buffer.alloc(BLOCK, 3))).toBe(true);
      } finally {
        nbd2.close();
      }
    } finally {
      nbdf.close();
      await detachAll(forced);
    }
  });
});
