import type { Role } from './identity.js';

// Who may call what, by the role in the caller's certificate. An admin may
// call everything; every other role only the methods listed for it here:
//   readonly  lists and shows (what `vsky ... list|show`, status and doctor read)
//   head      what head agents call: register, heartbeat, leases, failure and
//             job reports for themselves; chunk regions and volume state on nodes
//   node      what storage nodes call: register, heartbeat, resync progress,
//             chunk regions of a peer (a copy's source)
//   manager   what the manager calls on storage nodes and heads
// A method missing from the table is refused to all but admins; the unit test
// test/unit/security-policy.test.ts parses proto/*.proto and fails on any rpc
// without an entry, so a new rpc needs a conscious decision here.

/** gRPC services every authenticated caller may use: health checks and reflection. */
const OPEN_SERVICES = ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

type Table = Record<string, readonly Role[]>;

const RO: Role[] = ['readonly'];

const MANAGER: Table = {
  RegisterServer: ['node'],
  Heartbeat: ['node'],
  AddServer: [],
  ListServers: RO,
  RemoveServer: [],
  AddDisk: [],
  ListDisks: RO,
  RemoveDisk: [],
  RegisterHead: ['head'],
  HeadHeartbeat: ['head'],
  ListHeads: RO,
  CreateVolume: [],
  DeleteVolume: [],
  CreateSnapshot: [],
  CloneVolume: [],
  FlattenVolume: [],
  ListVolumes: RO,
  ShowVolume: RO,
  AttachVolume: [],
  DetachVolume: [],
  AcquireLease: ['head'],
  HandoffVolume: [],
  SetVolumeAccess: [],
  ReportReplicaFailure: ['head'],
  AllocateSegment: ['head'],
  FreeSegment: ['head'],
  FailDisk: [],
  FailServer: [],
  ReportResyncProgress: ['head', 'node'],
  ListResyncs: RO,
  Status: RO,
  CollectGarbage: [],
  ListEvents: RO,
  SubmitJob: [],
  GetJob: RO,
  ListJobs: RO,
  AbortJob: [],
  ReconVolume: [],
  ReportJob: ['head'],
};

const STORAGE_NODE: Table = {
  GetInfo: ['manager', 'readonly'],
  AddDisk: ['manager'],
  RemoveDisk: ['manager'],
  AllocateChunk: ['manager'],
  FreeChunk: ['manager'],
  ListChunks: ['manager', 'readonly'],
  GetChunkRegions: ['manager', 'head', 'node', 'readonly'],
  CopyChunk: ['manager'],
  SetDiskFault: [],
  NoteSegment: ['manager'],
  SetVolumeState: ['manager', 'head'],
  KeepVolumeNote: ['manager'],
  MarkVolumeDeleting: ['manager'],
  KeepDiskNote: ['manager'],
  ForgetDeletedVolumes: ['manager'],
  KeepServerNote: ['manager'],
  ReassignChunk: ['manager'],
};

const HEAD_AGENT: Table = {
  Attach: ['manager'],
  Detach: ['manager'],
  ListAttached: ['manager', 'readonly'],
  UpdateMap: ['manager'],
  StartResync: ['manager'],
  ReleaseLease: ['manager'],
  QuiesceVolume: ['manager'],
  FlattenVolume: ['manager'],
  RunJob: ['manager'],
};

/** Fully qualified service name -> method -> roles allowed besides admin. */
export const POLICY: Readonly<Record<string, Table>> = {
  'vsky.manager.Manager': MANAGER,
  'vsky.storage.StorageNode': STORAGE_NODE,
  'vsky.head.HeadAgent': HEAD_AGENT,
};

/** Splits a gRPC path "/pkg.Service/Method". */
export function splitMethodPath(path: string): { service: string; method: string } {
  const m = /^\/([^/]+)\/([^/]+)$/.exec(path);
  return m ? { service: m[1]!, method: m[2]! } : { service: '', method: path };
}

/** The roles that may call a gRPC path (admin always may). */
export function rolesAllowed(path: string): readonly Role[] {
  const { service, method } = splitMethodPath(path);
  if (OPEN_SERVICES.includes(service)) return ['admin', 'readonly', 'head', 'node', 'manager'];
  return ['admin', ...(POLICY[service]?.[method] ?? [])];
}

export function isAllowed(role: Role, path: string): boolean {
  return rolesAllowed(path).includes(role);
}
