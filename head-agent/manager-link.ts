import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CorruptMetadataError, errorMessage } from '../shared/errors.js';
import { call, managerClient, type ManagerClient } from '../shared/grpc.js';
import { moduleLogger, type Logger } from '../shared/logger.js';
import type { HeadHeartbeatRequest } from '../proto/generated/vsky/manager/HeadHeartbeatRequest.js';
import type { HeartbeatReply__Output } from '../proto/generated/vsky/manager/HeartbeatReply.js';
import type { HeadIntIdFile } from './int-id.js';

/** A write lease a head claims in its heartbeat (proto LeaseClaim). */
export interface LeaseClaim { volume: string; epoch: number }

// The head's link to the manager: RegisterHead at start, retried with back-off
// while the manager is down (never fatal), then HeadHeartbeat every interval;
// a heartbeat answered "unknown" (the manager lost its state) registers again.
// Each heartbeat names the write leases this head holds, which renews them;
// the reply names those the manager gave to another head meanwhile, and the
// head fences itself off them at once (storage would refuse its writes anyway).
// Nothing on the I/O path depends on this link: attached volumes keep serving
// while the manager is stopped or restarting.

const HEAD_ID_FILE = 'head-id';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The head's stable id: a UUID kept in dataDir (created atomically on first start). */
export async function loadHeadId(dataDir: string): Promise<string> {
  await mkdir(dataDir, { recursive: true });
  const path = join(dataDir, HEAD_ID_FILE);
  try {
    const text = (await readFile(path, 'utf8')).trim();
    if (!UUID_RE.test(text)) throw new CorruptMetadataError(`${path} does not hold a head id (UUID); remove it to get a new one`, { path });
    return text.toLowerCase();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const id = randomUUID();
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, `${id}\n`, { flush: true });
  await rename(tmp, path);
  return id;
}

export interface ManagerLinkOptions {
  managerAddress: string;
  headId: string;
  name: string;
  controlAddress: string;
  nbdAddress: string;
  /** HOST:PORT of the iSCSI portal, or empty. */
  iscsiAddress?: string;
  heartbeatIntervalMs: number;
  /** The write leases this head holds (each heartbeat renews them). */
  leases?: () => LeaseClaim[];
  /** The storage jobs this head runs (each heartbeat renews their leases). */
  jobs?: () => string[];
  /** The manager says these leases are no longer ours (taken over, detached): fence them at once. */
  onRevoked?: (revoked: LeaseClaim[]) => void;
  /** Where the head keeps its VastSky hsvrid (reported at registration, updated from heartbeat replies). */
  intId?: HeadIntIdFile;
  /** Register retry back-off bounds. */
  retryInitialMs?: number;
  retryMaxMs?: number;
}

export class ManagerLink {
  private readonly opts: ManagerLinkOptions;
  private readonly client: ManagerClient;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private registered = false;
  private retryMs: number;
  private warned = false;
  /** This head's clock minus the manager's (ms), from the last heartbeat; reported in the next one (vsky doctor). */
  private clockOffsetMs: number | undefined;

  constructor(opts: ManagerLinkOptions) {
    this.opts = opts;
    this.client = managerClient(opts.managerAddress);
    this.log = moduleLogger('head-manager-link', { manager: opts.managerAddress });
    this.retryMs = opts.retryInitialMs ?? 200;
  }

  /** The manager's client (the replica-failure handler reports through it). */
  get managerClient(): ManagerClient {
    return this.client;
  }

  /** True once the manager accepted our registration (and has not forgotten us since). */
  get isRegistered(): boolean {
    return this.registered;
  }

  /** Starts registering in the background; never throws. */
  start(): void {
    void this.step();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.client.close();
  }

  private async step(): Promise<void> {
    if (this.stopped) return;
    const timeout = Math.max(1000, this.opts.heartbeatIntervalMs * 2);
    try {
      if (!this.registered) {
        await call(this.client, this.client.RegisterHead, {
          headId: this.opts.headId, name: this.opts.name,
          controlAddress: this.opts.controlAddress, nbdAddress: this.opts.nbdAddress, iscsiAddress: this.opts.iscsiAddress ?? '',
          hsvrid: this.opts.intId?.value.hsvrid ?? 0, hsvridClusterId: this.opts.intId?.value.clusterId ?? '',
        }, timeout);
        this.registered = true;
        this.retryMs = this.opts.retryInitialMs ?? 200;
        this.log.info({ headId: this.opts.headId }, this.warned ? 'registered with the manager (it is back)' : 'registered with the manager');
        this.warned = false;
      } else {
        const leases = this.opts.leases?.() ?? [];
        const offset = this.clockOffsetMs;
        const sentMs = Date.now();
        const reply = await call<HeadHeartbeatRequest, HeartbeatReply__Output>(this.client, this.client.HeadHeartbeat, {
          headId: this.opts.headId, leases, jobs: this.opts.jobs?.() ?? [], clockOffsetMs: offset ?? 0, clockOffsetKnown: offset !== undefined,
        }, timeout);
        this.measureClock(sentMs, Date.now(), reply.managerTimeMs);
        if (reply.revoked.length > 0) this.opts.onRevoked?.(reply.revoked);
        if (!reply.known) {
          this.log.warn('the manager does not know this head any more; registering again');
          this.registered = false;
          this.schedule(0);
          return;
        }
        void this.opts.intId?.update(reply.clusterId, reply.intId)
          .catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'could not keep the hsvrid the manager gave'));
        if (this.warned) this.log.info('manager reachable again');
        this.warned = false;
      }
      this.schedule(this.opts.heartbeatIntervalMs);
    } catch (err) {
      if (this.stopped) return;
      if (!this.warned) {
        this.log.warn({ err: errorMessage(err) }, 'manager unreachable; attached volumes keep serving, retrying');
        this.warned = true;
      }
      if (this.registered) {
        this.schedule(this.opts.heartbeatIntervalMs);
      } else {
        this.schedule(this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, this.opts.retryMaxMs ?? 5000);
      }
    }
  }

  /** The manager answered at `managerMs` on its clock, about the midpoint of our round trip. */
  private measureClock(sentMs: number, receivedMs: number, managerMs: number): void {
    if (managerMs <= 0) return; // a manager that does not send its time
    const offset = Math.round((sentMs + receivedMs) / 2 - managerMs);
    if (this.clockOffsetMs === undefined || Math.abs(offset - this.clockOffsetMs) >= 1000) {
      this.log.info({ clockOffsetMs: offset, roundTripMs: receivedMs - sentMs }, 'clock offset from the manager measured');
    }
    this.clockOffsetMs = offset;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.step(), ms);
    this.timer.unref();
  }
}
