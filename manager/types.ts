// The manager's records: what it persists in LevelDB (manager/store.ts) and
// keeps in memory. Plain JSON-able objects; the wire shapes (proto messages)
// are produced from these by manager/views.ts. One file per kind of record in
// manager/types/; this file is their one public face (most of the manager
// imports records from here).

export type { ReplicaState } from '../shared/replica-state.js';
export * from './types/cluster-records.js';
export * from './types/volume-record.js';
export * from './types/chunk-map-record.js';
export * from './types/resync-record.js';
export * from './types/event-record.js';
