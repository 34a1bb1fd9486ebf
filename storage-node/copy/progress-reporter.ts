import { errorMessage } from '../../shared/errors.js';
import { call, managerClient, type ManagerClient } from '../../shared/grpc.js';
import type { Logger } from '../../shared/logger.js';
import type { ResyncProgress } from '../../proto/generated/vsky/manager/ResyncProgress.js';
import { delay } from '../../shared/token-bucket.js';

// Reports a resync's progress to the manager (ReportResyncProgress): at most
// one report per interval while the copy runs (one call in flight at a time,
// never blocking the copy), and a final one that is retried a few times. A
// reply with cancel=true stops the copy through `onCancel`. The manager being
// unreachable does not stop a copy: it re-dispatches lost tasks with
// start_region anyway.

export const REPORT_INTERVAL_MS = 500;
const FINAL_ATTEMPTS = 3;
const CALL_TIMEOUT_MS = 5000;

export class ProgressReporter {
  private readonly client: ManagerClient | undefined;
  private readonly intervalMs: number;
  private readonly log: Logger;
  private readonly onCancel: () => void;
  private lastSent = -Infinity;
  private inflight: Promise<void> | undefined;
  /** Reports sent (tests, logs). */
  sent = 0;

  /** An empty `managerAddress` makes every report a no-op (standalone use). */
  constructor(managerAddress: string, log: Logger, onCancel: () => void, intervalMs = REPORT_INTERVAL_MS) {
    this.client = managerAddress === '' ? undefined : managerClient(managerAddress);
    this.intervalMs = intervalMs;
    this.log = log;
    this.onCancel = onCancel;
  }

  /**
   * Sends `progress()` if the interval has passed and no report is in flight.
   * The producer may be async (the copy syncs its target first, so the
   * reported resume point is durable); if it throws, nothing is sent.
   */
  maybeReport(progress: () => Promise<ResyncProgress>): void {
    if (this.client === undefined || this.inflight !== undefined) return;
    if (performance.now() - this.lastSent < this.intervalMs) return;
    this.lastSent = performance.now();
    this.inflight = progress().then((p) => this.send(p)).catch((err: unknown) => {
      this.log.debug({ err: errorMessage(err) }, 'progress report failed (the copy goes on)');
    }).finally(() => {
      this.inflight = undefined;
    });
  }

  /** The final report (finished or failed), after any report in flight; retried, never throws. */
  async final(progress: ResyncProgress): Promise<void> {
    if (this.client === undefined) return;
    await this.inflight;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.send(progress);
        return;
      } catch (err) {
        if (attempt >= FINAL_ATTEMPTS) {
          this.log.warn({ err: errorMessage(err), attempts: attempt }, 'cannot send the final resync report to the manager');
          return;
        }
        await delay(200 * attempt);
      }
    }
  }

  close(): void {
    this.client?.close();
  }

  private async send(progress: ResyncProgress): Promise<void> {
    const reply = await call(this.client!, 'ReportResyncProgress', progress, CALL_TIMEOUT_MS);
    this.sent++;
    if (reply.cancel) this.onCancel();
  }
}
