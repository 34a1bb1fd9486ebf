import { moduleLogger } from '../shared/logger.js';
import type { Jobs } from './jobs/runner.js';
import { isFinal } from './jobs/records.js';
import type { VolumeRecord } from './types.js';
import type { Volumes } from './volumes.js';
import { VskyError } from '../shared/errors.js';

// gRPC FlattenVolume (kept for callers of the synchronous form): submits a
// flatten storage job (manager/jobs/flatten-job.ts; `vsky volume flatten`
// uses SubmitJob) and waits for its end. Returns the flattened volume.

const log = moduleLogger('manager.flatten');
const POLL_MS = 200;

export async function flattenVolume(name: string, deps: { volumes: Volumes; jobs: Jobs }): Promise<VolumeRecord> {
  const j = await deps.jobs.submit({ jobId: '', kind: 'flatten', volume: name, expectedGeneration: 0, args: {} });
  while (!isFinal(j.state)) await new Promise((r) => setTimeout(r, POLL_MS));
  if (j.state !== 'succeeded') throw new VskyError('ECONFLICT', `flatten job ${j.id} of ${name} ${j.state}: ${j.error}`, { volume: name, jobId: j.id });
  log.info({ volume: name, job: j.id }, 'FlattenVolume: the job succeeded');
  return deps.volumes.entry(name).volume;
}
