// The manager's resync machinery, as the rest of the manager sees it. A
// replica that went stale or lost its disk is rebuilt here: spares.ts places
// a replacement chunk, resyncs.ts runs the passes (plan, dispatch, outcomes)
// over the book of running copies (book.ts), the scheduler (scheduler.ts)
// decides which copies start under the per-disk and global limits, and
// views.ts renders them for the API. Code outside manager/resync/ imports
// from this file only.

export { DEFAULT_RESYNC_OPTIONS, Resyncs } from './resyncs.js';
export { DEFAULT_SCHEDULER_LIMITS, type SchedulerLimits } from './scheduler.js';
export { allocateReplicaChunk, type ReplicaItem } from './spares.js';
export type { ResyncContext } from './context.js';
export { resyncListView, volumeHealth } from './views.js';
export { isResyncJobId, resyncJobView, resyncJobViews } from './job-views.js';
