import type { JobRecord } from '../jobs/records.js';
import type { XStruct, XValue } from './codec.js';
import { volumeOf, type Method } from './context.js';
import { errnoFault } from './faults.js';
import { has, isInt, mand } from './params.js';

// Storage jobs (docs/jobs.md) in VastSky's style: one struct with ver, errno
// faults. submitJob is idempotent on the caller's jobid (the same request
// again returns the same job); a wrong expected generation is ESTALE and
// touches nothing; aborting an ended job is EBUSY.

const GiB = 1024 ** 3;

function jobStruct(j: JobRecord): XStruct {
  return {
    jobid: j.id, kind: j.kind, lvolname: j.volume, state: j.state, error: j.error, generation: j.expectedGeneration,
    epoch: j.epoch, done: j.done, total: j.total, created: Math.floor(j.createdMs / 1000), started: Math.floor(j.startedMs / 1000),
    ended: Math.floor(j.endedMs / 1000),
  };
}

function jobId(data: XStruct): string {
  mand(data, 'jobid');
  const v: XValue = data.jobid;
  if (typeof v !== 'string' || v === '') throw errnoFault('EINVAL', 'jobid must be a non-empty string (1-48 of A-Z a-z 0-9 . _ : -)');
  return v;
}

/** submitJob {ver, jobid, kind: "wipe" | "resize", lvolid | lvolname, [generation], [capacity: GB, for resize]}. */
const submitJob: Method = async (ctx, data) => {
  const id = jobId(data);
  mand(data, 'kind');
  const kind = data.kind;
  if (kind !== 'wipe' && kind !== 'resize') throw errnoFault('EINVAL', 'kind must be "wipe" or "resize"');
  const v = volumeOf(ctx, data);
  let expectedGeneration = 0;
  if (has(data, 'generation')) {
    if (!isInt(data.generation) || data.generation < 0) throw errnoFault('EINVAL', 'generation must be an int >= 0 (0: the current one)');
    expectedGeneration = data.generation;
  }
  const args: Record<string, string> = {};
  if (kind === 'resize') {
    mand(data, 'capacity');
    if (!isInt(data.capacity) || data.capacity <= 0) throw errnoFault('EINVAL', 'capacity must be an int (GB)');
    args.size = String(data.capacity * GiB);
  }
  return jobStruct(await ctx.core.jobs.submit({ jobId: id, kind, volume: v.name, expectedGeneration, args }));
};

const getJob: Method = async (ctx, data) => jobStruct(ctx.core.jobs.get(jobId(data)));

/** listJobs {ver, [lvolid | lvolname]}: every job, or a volume's. */
const listJobs: Method = async (ctx, data) => {
  const volume = has(data, 'lvolid') || has(data, 'lvolname') ? volumeOf(ctx, data).name : '';
  return ctx.core.jobs.list(volume).map(jobStruct);
};

const abortJob: Method = async (ctx, data) => jobStruct(await ctx.core.jobs.abort(jobId(data)));

export const jobMethods: Record<string, Method> = { submitJob, getJob, listJobs, abortJob };
