// The state of one replica of a segment, as the manager records it and the
// head applies it (ReplicaLocation.state in proto/common.proto): in_sync
// replicas take reads and writes; a stale one takes writes but no reads
// until a resync copies it back (docs/design.md rule 2); a resyncing one is being
// copied. One home for the manager and the head.

export type ReplicaState = 'in_sync' | 'stale' | 'resyncing';

export const REPLICA_STATES: readonly ReplicaState[] = ['in_sync', 'stale', 'resyncing'];
