import type { JobInfo } from '../../proto/generated/vsky/manager/JobInfo.js';
import type { ManagerStore } from '../store.js';

// Storage jobs (issue 9, the oVirt way; docs/jobs.md): what the manager
// persists about each job, and where. One LevelDB key per job:
//
//   job/<job id>   JobRecord (JSON)
//
// Job ids are chosen by the caller (idempotent submit) and kept on the chunk
// records of the volume too (storage-node/disk-format.ts: at most 48 bytes),
// so reconnaissance can tell which job last changed a volume.

export type JobKind = 'wipe' | 'resize' | 'copy' | 'flatten';
export const JOB_KINDS: readonly JobKind[] = ['wipe', 'resize', 'copy', 'flatten'];

/**
 * pending: accepted, not started. running: the worker holds the lease.
 * aborting: asked to stop; the worker stops at its next step. aborted,
 * succeeded, failed, fenced: final (fenced: found interrupted by
 * reconnaissance and fenced off under a newer epoch and generation).
 */
export type JobState = 'pending' | 'running' | 'aborting' | 'aborted' | 'succeeded' | 'failed' | 'fenced';
export const FINAL_STATES: readonly JobState[] = ['aborted', 'succeeded', 'failed', 'fenced'];

export function isFinal(s: JobState): boolean {
  return FINAL_STATES.includes(s);
}

export interface JobRecord {
  id: string;
  kind: JobKind;
  volume: string;
  volumeId: number;
  /** The generation the job starts from (g): it ends at g+1 (succeeded) or leaves the volume DIRTY at g. */
  expectedGeneration: number;
  args: Record<string, string>;
  state: JobState;
  /** Why it failed, was aborted or fenced ('' otherwise). */
  error: string;
  /** The lease epoch the job works under (0 before it took the lease). */
  epoch: number;
  /** Work done and to do, in bytes (wipe: bytes zeroed over every replica; resize: chunks allocated; copy: bytes copied or zeroed; flatten: bytes of the volume examined). */
  done: number;
  total: number;
  /** The head agent hosting the job (its id; copy jobs), absent: the manager runs it. */
  host?: string;
  /** When done/total were last reported by the host (ms). */
  updatedMs?: number;
  createdMs: number;
  startedMs: number;
  endedMs: number;
  /** A resize of an attached volume: it works under the holder's epoch and is never fenced (online-resize.ts). */
  online?: boolean;
  /** Flatten: bytes copied from the backing chain into the volume's own chunks. */
  copied?: number;
  /** Flatten with merge (merge.ts): the segments handed back from the snapshot without a copy. */
  merged?: number[];
  /** Pending: what it waits for (a copy: disks at the per-disk limit, copy.ts); running: why it is stuck (a flatten retrying a segment). */
  waiting?: string;
}

/** Job ids: what a chunk record keeps (48 bytes), from a safe alphabet. */
export const JOB_ID_RE = /^[A-Za-z0-9._:-]{1,48}$/;

export const jobKeys = {
  job: (id: string) => `job/${id}`,
  range: { gte: 'job/', lt: 'job0' },
};

/** Writes one job record (a batch of its own, ordered after every batch issued before). */
export async function putJob(store: ManagerStore, job: JobRecord): Promise<void> {
  await store.write(store.batch().putJob(job));
}

/** Every job in the database, oldest first. */
export async function loadJobs(store: ManagerStore): Promise<JobRecord[]> {
  const out: JobRecord[] = [];
  for await (const [, value] of store.db.iterator(jobKeys.range)) out.push(value as JobRecord);
  return out.sort((a, b) => a.createdMs - b.createdMs || a.id.localeCompare(b.id));
}

/** The wire shape (proto JobInfo). */
export function jobView(j: JobRecord): JobInfo {
  return {
    jobId: j.id, kind: j.kind, volume: j.volume, volumeId: j.volumeId, expectedGeneration: j.expectedGeneration, args: j.args,
    state: j.state, error: j.error, epoch: j.epoch, done: j.done, total: j.total, createdMs: j.createdMs, startedMs: j.startedMs, endedMs: j.endedMs,
    host: j.host ?? '', updatedMs: j.updatedMs ?? 0, waiting: j.waiting ?? '', copied: j.copied ?? 0,
  };
}

/** A submit with an existing job id asks for the same job (idempotent submit). */
export function sameRequest(existing: JobRecord, kind: JobKind, input: { volume: string; expectedGeneration: number; args: Record<string, string> }): boolean {
  return existing.kind === kind && existing.volume === input.volume
    && (input.expectedGeneration === 0 || input.expectedGeneration === existing.expectedGeneration)
    && JSON.stringify(sortKeys(existing.args)) === JSON.stringify(sortKeys(input.args));
}

function sortKeys(o: Record<string, string>): Array<[string, string]> {
  return Object.entries(o).sort(([a], [b]) => a.localeCompare(b));
}
