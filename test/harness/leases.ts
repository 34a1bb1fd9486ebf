import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DaemonProcess } from '../../deploy/daemon-process.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { Opcode, Status, statusName } from '../../shared/data-protocol/frame.js';
import { call } from '../../shared/grpc.js';
import type { VolumeInfo__Output } from '../../proto/generated/vsky/manager/VolumeInfo.js';
import type { VolumeMap__Output } from '../../proto/generated/vsky/common/VolumeMap.js';
import { RawDataClient } from './raw-data-client.js';
import { clusterDataSecurity } from './data-auth.js';
import { freePort } from './ports.js';

// Helpers of the write-lease tests (test/integration/leases.test.ts, the
// fencing and live-migration tests, test/bench/leases.ts): a head agent
// launched with its own manager address (a partition proxy), the manager's
// view of a volume's lease, raw data-protocol writes and reads on every
// replica of a segment (what a stale holder would send, and what each copy
// holds on its own), and polling.

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` every `everyMs` until it returns a truthy value; throws with `what` after timeoutMs. */
export async function waitUntil<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, what: string, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export interface StartedHead {
  daemon: DaemonProcess;
  name: string;
  /** host:port of its NBD server. */
  nbd: string;
  /** host:port of its control service (what the manager calls). */
  control: string;
}

export interface HeadLaunchOptions {
  /** The manager address the head registers and heartbeats with (default the cluster's; e.g. a TcpProxy's). */
  manager?: string;
  heartbeatIntervalMs?: number;
  /** Extra `vsky head-agent` flags, e.g. ['--nbd-tls', 'require', ...]. */
  args?: string[];
}

/**
 * A head agent next to the cluster's own ("another hypervisor"), NBD only,
 * registered with `opts.manager` (default: the cluster's manager) and waited
 * for until the manager lists it active. Stopped by the caller.
 */
export async function launchHead(c: LocalCluster, name: string, opts: HeadLaunchOptions = {}): Promise<StartedHead> {
  if (c.headNames.includes(name)) throw new Error(`launchHead: the cluster already runs a head named ${name}`);
  const dir = join(c.opts.dir, name);
  mkdirSync(dir, { recursive: true });
  await c.tls.ensure({ name, role: 'head', hosts: ['127.0.0.1'] });
  const daemon = new DaemonProcess(name, [
    'head-agent', '--data-dir', dir, '--name', name, '--host', '127.0.0.1',
    '--grpc-port', String(await freePort()), '--nbd-port', String(await freePort()), '--no-iscsi',
    '--heartbeat-interval', String(opts.heartbeatIntervalMs ?? c.opts.heartbeatIntervalMs), '--manager', opts.manager ?? c.managerAddress,
    ...c.dataSecurityArgs(), ...c.tlsArgs(), ...(opts.args ?? []),
  ], join(c.opts.dir, 'logs', `${name}.log`));
  const ready = await daemon.start();
  await waitHeadActive(c, name);
  return { daemon, name, nbd: String(ready.nbdAddress), control: String(ready.controlAddress) };
}

/** Until the manager lists head `name` as active. */
export async function waitHeadActive(c: LocalCluster, name: string, timeoutMs = 15_000): Promise<void> {
  const m = c.client();
  try {
    await waitUntil(async () => (await call(m, 'ListHeads', {})).heads.some((h) => h.name === name && h.state === 'active'), timeoutMs, `head ${name} active`, 100);
  } finally {
    m.close();
  }
}

/** The manager's VolumeInfo and map of a volume. */
export async function showVolume(c: LocalCluster, name: string): Promise<{ info: VolumeInfo__Output; map: VolumeMap__Output }> {
  const m = c.client();
  try {
    const d = await call(m, 'ShowVolume', { name });
    return { info: d.info!, map: d.map! };
  } finally {
    m.close();
  }
}

/** Who holds a volume, under which epoch, and who is its standby: what a refused request must leave unchanged. */
export interface LeaseView {
  epoch: number;
  holder: string;
  standby: string;
  nbdUri: string;
  standbyNbdUri: string;
}

export async function leaseView(c: LocalCluster, name: string): Promise<LeaseView> {
  const { info } = await showVolume(c, name);
  return { epoch: info.epoch, holder: info.attachedHead, standby: info.standbyHead, nbdUri: info.nbdUri, standbyNbdUri: info.standbyNbdUri };
}

export interface ReplicaReply {
  slot: number;
  dataAddress: string;
  status: string;
  message: string;
  data: Buffer;
}

/**
 * Sends one data-protocol request to every replica of `segment`, each on its
 * own connection to its node (no head involved): a WRITE carrying `epoch` (what
 * a holder with that epoch would send), or a READ (epoch-free). Replies in slot order.
 */
export async function everyReplica(
  c: LocalCluster, volume: string, segment: number,
  req: { op: 'write'; epoch: number; offset: number; data: Buffer } | { op: 'read'; offset: number; length: number },
): Promise<ReplicaReply[]> {
  const { map } = await showVolume(c, volume);
  const seg = map.segments.find((s) => s.index === segment);
  if (!seg) throw new Error(`volume ${volume} has no segment ${segment}`);
  const out: ReplicaReply[] = [];
  const { key } = clusterDataSecurity(c);
  for (const r of [...seg.replicas].sort((a, b) => a.slot - b.slot)) {
    const client = await RawDataClient.connect(r.dataAddress, key);
    try {
      const common = { volumeId: map.volumeId, segment, slot: r.slot, offset: req.offset };
      const reply = req.op === 'write'
        ? await client.send({ ...common, opcode: Opcode.WRITE, epoch: req.epoch, length: req.data.length }, req.data)
        : await client.send({ ...common, opcode: Opcode.READ, length: req.length });
      out.push({
        slot: r.slot, dataAddress: r.dataAddress, status: statusName(reply.status),
        message: reply.status === Status.OK ? '' : reply.payload.toString('utf8'), data: reply.payload,
      });
    } finally {
      client.close();
    }
  }
  return out;
}

/** The manager's log so far (JSON lines). */
export function managerLog(c: LocalCluster): string {
  return readFileSync(join(c.opts.dir, 'logs', 'manager.log'), 'utf8');
}

/** A daemon's log so far (its file name without .log: "head" for head1, "head2", "manager", ...). */
export function daemonLog(c: LocalCluster, file: string): string {
  return readFileSync(join(c.opts.dir, 'logs', `${file}.log`), 'utf8');
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export const BLOCK = 4096;
const STAMP_MAGIC = 0x4c534531; // 'LSE1'

/**
 * A 4 KiB block that says who wrote it: magic, writer tag, block number and
 * sequence number, then bytes derived from them (a torn or foreign block does
 * not pass stampOf).
 */
export function stampedBlock(tag: number, block: number, seq: number): Buffer {
  const b = Buffer.allocUnsafe(BLOCK);
  b.writeUInt32BE(STAMP_MAGIC, 0);
  b.writeUInt32BE(tag, 4);
  b.writeUInt32BE(block, 8);
  b.writeUInt32BE(seq, 12);
  let x = (Math.imul(tag + 1, 0x9e3779b1) ^ Math.imul(block + 1, 0x85ebca6b) ^ Math.imul(seq + 1, 0xc2b2ae35)) | 1;
  for (let i = 16; i < BLOCK; i += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    b.writeInt32BE(x, i);
  }
  return b;
}

/** Who wrote this block: undefined for zeros, 'garbage' when it is not a well-formed stamped block. */
export function stampOf(b: Buffer): { tag: number; block: number; seq: number } | undefined | 'garbage' {
  if (b.every((x) => x === 0)) return undefined;
  if (b.length !== BLOCK || b.readUInt32BE(0) !== STAMP_MAGIC) return 'garbage';
  const s = { tag: b.readUInt32BE(4), block: b.readUInt32BE(8), seq: b.readUInt32BE(12) };
  return stampedBlock(s.tag, s.block, s.seq).equals(b) ? s : 'garbage';
}

/** One write of a StampWriter. */
export interface StampedWrite {
  block: number;
  seq: number;
  /** performance.now() when it was sent, and when its reply (or failure) came. */
  issued: number;
  settled?: number;
  ok?: boolean;
  error?: string;
}

/**
 * A background writer on one NBD connection: `queueDepth` workers write
 * stamped 4 KiB blocks (tag, block, seq) round-robin over blocks
 * [0, blocks) at `base`, recording every write's outcome and timing; a
 * failed write is recorded and the next one is tried after `retryMs` (it
 * keeps trying, so "later" writes exist), until stop() or the connection closes.
 */
export class StampWriter {
  readonly writes: StampedWrite[] = [];
  private running = false;
  private seq = 0;
  private next = 0;
  private workers: Promise<void>[] = [];
  private readonly busy = new Set<number>();

  constructor(
    private readonly client: { write(offset: number, data: Buffer): Promise<void>; readonly broken: boolean },
    private readonly opts: { tag: number; blocks: number; base?: number; queueDepth?: number; retryMs?: number; pauseMs?: number },
  ) {}

  start(): void {
    if (this.opts.blocks <= (this.opts.queueDepth ?? 4)) throw new Error('StampWriter: give more blocks than the queue depth');
    this.running = true;
    this.workers = Array.from({ length: this.opts.queueDepth ?? 4 }, () => this.worker());
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.workers);
  }

  get acked(): number {
    return this.writes.filter((w) => w.ok === true).length;
  }

  /** The seq of the last acknowledged write of each block. */
  lastAcked(): Map<number, number> {
    const m = new Map<number, number>();
    for (const w of this.writes) if (w.ok === true && w.seq > (m.get(w.block) ?? 0)) m.set(w.block, w.seq);
    return m;
  }

  private async worker(): Promise<void> {
    while (this.running && !this.client.broken) {
      const block = this.next++ % this.opts.blocks;
      if (this.busy.has(block)) continue; // never two writes of one block at once: the model needs their order
      this.busy.add(block);
      const rec: StampedWrite = { block, seq: ++this.seq, issued: performance.now() };
      this.writes.push(rec);
      try {
        await this.client.write((this.opts.base ?? 0) + block * BLOCK, stampedBlock(this.opts.tag, block, rec.seq));
        rec.ok = true;
      } catch (err) {
        rec.ok = false;
        rec.error = err instanceof Error ? err.message : String(err);
      }
      rec.settled = performance.now();
      this.busy.delete(block);
      const wait = rec.ok ? this.opts.pauseMs ?? 0 : this.opts.retryMs ?? 20;
      if (wait > 0) await sleep(wait);
    }
  }
}
