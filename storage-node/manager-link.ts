import { ConflictError, NotFoundError, errorMessage } from '../shared/errors.js';
import { call, managerClient, type ManagerClient } from '../shared/grpc.js';
import { moduleLogger } from '../shared/logger.js';
import type { HeartbeatReply__Output } from '../proto/generated/vsky/manager/HeartbeatReply.js';
import type { HeartbeatRequest } from '../proto/generated/vsky/manager/HeartbeatRequest.js';
import { nodeInfo, diskInfo, type NodeContext } from './control-service.js';

// The node's side of cluster membership: register with the manager (retrying
// with backoff while it is unreachable), then heartbeat every interval with
// the state of every disk. A heartbeat answered with known=false (the manager
// lost us, e.g. a fresh database) sends us back to registration. The manager
// being down never stops the node: the data path does not need it. A disk
// whose reported state changes (failed, fault injection) triggers a heartbeat
// at once, so the manager starts replacing its chunks without waiting a beat.
// Registration also brings every volume's current lease epoch: the node raises
// its minimum epochs to them (it may have missed fences while it was down) and
// takes writes only from then on (ChunkStore.refreshEpochs).

const MIN_BACKOFF_MS = 200;
const MAX_BACKOFF_MS = 5000;

export interface ManagerLinkOptions {
  address: string;
  intervalMs: number;
  /** Deadline of each RegisterServer/Heartbeat call. */
  timeoutMs: number;
}

export class ManagerLink {
  private readonly ctx: NodeContext;
  private readonly opts: ManagerLinkOptions;
  private readonly client: ManagerClient;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private failing: false | 'unreachable' | 'refused' = false;
  private unsubscribe: (() => void) | undefined;
  private readonly log = moduleLogger('manager-link');
  registered = false;

  constructor(ctx: NodeContext, opts: ManagerLinkOptions) {
    this.ctx = ctx;
    this.opts = opts;
    this.client = managerClient(opts.address);
  }

  start(): void {
    this.unsubscribe ??= this.ctx.store.onDiskStateChange((disk) => {
      this.log.info({ disk: disk.id, state: disk.reportedState }, 'disk state changed: heartbeat now');
      this.wake?.();
    });
    this.running ??= this.run();
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer) clearTimeout(this.timer);
    this.wake?.();
    // A call in flight is not awaited (a hung manager must not delay shutdown);
    // the loop sees `stopped` when it returns and ends.
    this.client.close();
  }

  private async run(): Promise<void> {
    let backoff = MIN_BACKOFF_MS;
    while (!this.stopped) {
      try {
        if (!this.registered) {
          const info = nodeInfo(this.ctx);
          const reply = await call(this.client, 'RegisterServer', info, this.opts.timeoutMs);
          await this.ctx.store.joinCluster(reply.clusterId);
          const behind = await this.ctx.store.refreshEpochs(reply.volumeEpochs);
          this.registered = true;
          this.log.info({ manager: this.opts.address, serverId: info.serverId, disks: info.disks?.length, epochsRaised: behind }, 'registered with manager');
        } else {
          const reply = await call<HeartbeatRequest, HeartbeatReply__Output>(this.client, this.client.Heartbeat,
            { serverId: this.ctx.state.serverId, disks: this.ctx.store.diskList().map((d) => diskInfo(d, this.ctx.intIds, this.ctx.notes)) }, this.opts.timeoutMs);
          if (!reply.known) {
            this.log.warn({ manager: this.opts.address }, 'manager does not know this node: registering again');
            this.registered = false;
            continue;
          }
          // Not awaited: the heartbeat loop never waits for this file.
          void this.ctx.intIds.update(reply).catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'could not keep the VastSky ids the manager gave'));
        }
        if (this.failing) this.log.info({ manager: this.opts.address }, 'manager reachable again');
        this.failing = false;
        backoff = MIN_BACKOFF_MS;
        await this.sleep(this.opts.intervalMs);
      } catch (err) {
        if (err instanceof NotFoundError) this.registered = false;
        // Said once per kind of trouble: the manager unreachable, or answering no (e.g. our disks belong to another cluster).
        const trouble = err instanceof ConflictError ? 'refused' : 'unreachable';
        if (this.failing !== trouble) {
          if (trouble === 'refused') this.log.error({ manager: this.opts.address, err: errorMessage(err) }, 'the manager refused this node: retrying');
          else this.log.warn({ manager: this.opts.address, err: errorMessage(err) }, 'manager unreachable: retrying');
        }
        this.failing = trouble;
        await this.sleep(this.registered ? Math.min(backoff, this.opts.intervalMs) : backoff);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = () => {
        if (this.timer) clearTimeout(this.timer);
        this.wake = undefined;
        resolve();
      };
      this.timer = setTimeout(this.wake, ms);
      this.timer.unref();
    });
  }
}
