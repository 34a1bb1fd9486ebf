import type { JobRecord } from '../jobs/records.js';
import type { XStruct, XValue } from './codec.js';
import { volumeOf, type Method } from './context.js';
import { errnoFault } from './faults.js';
import { has, isInt, mand, truthy } from './params.js';

// Storage jobs (docs/jobs.md) in VastSky's style: one struct with ver, errno
// faults. submitJob is idempotent on the caller's jobid (the same request
// again returns the same job); a wrong expected generation is ESTALE and
// touches nothing; aborting an ended job is EBUSY.

const GiB = 1024 ** 3;

function jobStruct(j: JobRecord): XStruct {
  return {
    jobid: j.id, kind: j.kind, lvolname: j.volume, state: j.state, error: j.error, generation: j.expectedGeneration,
    epoch: j.epoch, done: j.done, total: j.total, created: Math.floor(j.createdMs / 1000), started: Math.floor(j.startedMs / 1000),
    ended: Math.floor(j.endedMs / 1000), source: j.args.source ?? '', host: j.host ?? '',
  };
}

function jobId(data: XStruct): string {
  mand(data, 'jobid');
  const v: XValue = data.jobid;
  if (typeof v !== 'string' || v === '') throw errnoFault('EINVAL', 'jobid must be a non-empty string (1-48 of A-Z a-z 0-9 . _ : -)');
  return v;
}

/** A copy's destination and arguments: src_lvolid | src_lvolname, [create: bool: lvolname is new], [host], [throttle: MiB/s]. */
function copyRequest(ctx: Parameters<Method>[0], data: XStruct): { volume: string; args: Record<string, string> } {
  const create = has(data, 'create') && truthy(data.create);
  const args: Record<string, string> = { source: volumeOf(ctx, data, 'src_').name };
  if (create) args.create = 'true';
  if (has(data, 'host') && data.host !== '') {
    if (typeof data.host !== 'string') throw errnoFault('EINVAL', 'host must be a head name or id (string)');
    args.host = data.host;
  }
  if (has(data, 'throttle')) {
    if (!isInt(data.throttle) || data.throttle < 0) throw errnoFault('EINVAL', 'throttle must be an int >= 0 (MiB/s; 0: unthrottled)');
    if (data.throttle > 0) args.throttle_mibps = String(data.throttle);
  }
  if (!create) return { volume: volumeOf(ctx, data).name, args };
  mand(data, 'lvolname');
  if (typeof data.lvolname !== 'string' || data.lvolname === '') throw errnoFault('EINVAL', 'lvolname must name the new destination (string)');
  return { volume: data.lvolname, args };
}

/**
 * submitJob {ver, jobid, kind: "wipe" | "resize" | "copy", lvolid | lvolname, [generation],
 * [capacity: GB, for resize], [src_lvolid | src_lvolname, create, host, throttle: for copy]}.
 */
const submitJob: Method = async (ctx, data) => {
  const id = jobId(data);
  mand(data, 'kind');
  const kind = data.kind;
  if (kind !== 'wipe' && kind !== 'resize' && kind !== 'copy') throw errnoFault('EINVAL', 'kind must be "wipe", "resize" or "copy"');
  let expected = 0;
  if (has(data, 'generation')) {
    if (!isInt(data.generation) || data.generation < 0) throw errnoFault('EINVAL', 'generation must be an int >= 0 (0: the current one)');
    expected = data.generation;
  }
  if (kind === 'copy') {
    const { volume, args } = copyRequest(ctx, data);
    return jobStruct(await ctx.core.jobs.submit({ jobId: id, kind, volume, expectedGeneration: expected, args }));
  }
  const v = volumeOf(ctx, data);
  const args: Record<string, string> = {};
  if (kind === 'resize') {
    mand(data, 'capacity');
    if (!isInt(data.capacity) || data.capacity <= 0) throw errnoFault('EINVAL', 'capacity must be an int (GB)');
    args.size = String(data.capacity * GiB);
  }
  return jobStruct(await ctx.core.jobs.submit({ jobId: id, kind, volume: v.name, expectedGeneration: expected, args }));
};

const getJob: Method = async (ctx, data) => jobStruct(ctx.core.jobs.get(jobId(data)));

/** listJobs {ver, [lvolid | lvolname]}: every job, or a volume's. */
const listJobs: Method = async (ctx, data) => {
  const volume = has(data, 'lvolid') || has(data, 'lvolname') ? volumeOf(ctx, data).name : '';
  return ctx.core.jobs.list(volume).map(jobStruct);
};

const abortJob: Method = async (ctx, data) => jobStruct(await ctx.core.jobs.abort(jobId(data)));

export const jobMethods: Record<string, Method> = { submitJob, getJob, listJobs, abortJob };
