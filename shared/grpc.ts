import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import type { ProtoGrpcType as ManagerProto } from '../proto/generated/manager.js';
import type { ProtoGrpcType as StorageProto } from '../proto/generated/storage_node.js';
import type { ProtoGrpcType as HeadProto } from '../proto/generated/head_agent.js';
import {
  AlreadyExistsError, CapacityError, ConflictError, CounterExhaustedError, InvalidArgumentError, NotFoundError,
  PermissionDeniedError, StaleEpochError, StaleGenerationError, TimeoutError, TransportError, VskyError,
} from './errors.js';
import { channelCredentials, serverCredentials, type GrpcSecurity } from './security/credentials.js';
import { REQUEST_ID_KEY, acceptRequestId, currentRequestId, runWithRequestId } from './request-id.js';

// gRPC glue shared by every component: loading the .proto files, typed
// clients, a promise wrapper for unary calls, and the one place that maps our
// typed errors to gRPC status codes and back (the stable code travels in the
// "vsky-code" metadata key).

export type { ManagerClient } from '../proto/generated/vsky/manager/Manager.js';
export type { StorageNodeClient } from '../proto/generated/vsky/storage/StorageNode.js';
export type { HeadAgentClient } from '../proto/generated/vsky/head/HeadAgent.js';

function findProtoDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'proto', 'manager.proto'))) return join(dir, 'proto');
    dir = dirname(dir);
  }
  throw new Error('cannot find the proto/ directory next to the installed package');
}

const PROTO_DIR = findProtoDir();
const LOAD_OPTIONS: protoLoader.Options = {
  keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
};

function load<T>(file: string): T {
  const def = protoLoader.loadSync(join(PROTO_DIR, file), LOAD_OPTIONS);
  return grpc.loadPackageDefinition(def) as unknown as T;
}

let protos: { manager: ManagerProto; storage: StorageProto; head: HeadProto } | undefined;
export function loadProtos(): { manager: ManagerProto; storage: StorageProto; head: HeadProto } {
  protos ??= {
    manager: load<ManagerProto>('manager.proto'),
    storage: load<StorageProto>('storage_node.proto'),
    head: load<HeadProto>('head_agent.proto'),
  };
  return protos;
}

/** The longest a client waits between reconnect attempts to a peer that went away (a restarted manager, say). */
export const MAX_RECONNECT_BACKOFF_MS = 2000;

const CLIENT_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': MAX_RECONNECT_BACKOFF_MS,
};

// Clients use the process's credentials (shared/security/credentials.ts) unless given others.
export function managerClient(address: string, security?: GrpcSecurity) {
  return new (loadProtos().manager.vsky.manager.Manager)(address, channelCredentials(security), CLIENT_OPTIONS);
}
export function storageNodeClient(address: string, security?: GrpcSecurity) {
  return new (loadProtos().storage.vsky.storage.StorageNode)(address, channelCredentials(security), CLIENT_OPTIONS);
}
export function headAgentClient(address: string, security?: GrpcSecurity) {
  return new (loadProtos().head.vsky.head.HeadAgent)(address, channelCredentials(security), CLIENT_OPTIONS);
}

type UnaryMethod<Req, Res> = (req: Req, meta: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => unknown;
// The generated clients overload each method; the last overload is (argument, callback).
type ReqOf<F> = F extends (argument: infer Req, callback: grpc.requestCallback<infer _Res>) => grpc.ClientUnaryCall ? Req : never;
type ResOf<F> = F extends (argument: infer _Req, callback: grpc.requestCallback<infer Res>) => grpc.ClientUnaryCall ? Res : never;
type UnaryKeys<C> = { [K in keyof C]: C[K] extends (...a: never[]) => grpc.ClientUnaryCall ? K : never }[keyof C] & string;

/**
 * Calls a unary method with a deadline; rejects with a typed VskyError.
 * Prefer the method-name form, which is fully typed: call(client, 'ListVolumes', {}).
 */
export interface CallOptions {
  /**
   * Wait (until the deadline) for the channel to connect instead of failing at
   * once while it is in reconnect backoff: daemons calling peers that may be
   * restarting want this; people at a CLI want a fast "cannot reach".
   */
  waitForReady?: boolean;
}
export function call<C extends grpc.Client, K extends UnaryKeys<C>>(client: C, method: K, req: ReqOf<C[K]>, timeoutMs?: number, opts?: CallOptions): Promise<ResOf<C[K]>>;
export function call<Req, Res>(client: grpc.Client, method: UnaryMethod<Req, Res>, req: Req, timeoutMs?: number, opts?: CallOptions): Promise<Res>;
export function call(client: grpc.Client, method: string | UnaryMethod<unknown, unknown>, req: unknown, timeoutMs = 10_000, opts: CallOptions = {}): Promise<unknown> {
  const fn = (typeof method === 'string' ? (client as unknown as Record<string, UnaryMethod<unknown, unknown>>)[method] : method)!;
  return new Promise((resolve, reject) => {
    const meta = new grpc.Metadata();
    if (opts.waitForReady) meta.setOptions({ waitForReady: true });
    const requestId = currentRequestId();
    if (requestId !== undefined) meta.set(REQUEST_ID_KEY, requestId);
    fn.call(client, req, meta, { deadline: Date.now() + timeoutMs }, (err, res) => {
      if (err) reject(fromGrpcError(err));
      else resolve(res);
    });
  });
}

const CODE_TO_STATUS: Record<string, grpc.status> = {
  EINVAL: grpc.status.INVALID_ARGUMENT,
  EPROTO: grpc.status.INVALID_ARGUMENT,
  ENOTFOUND: grpc.status.NOT_FOUND,
  EEXIST: grpc.status.ALREADY_EXISTS,
  ECONFLICT: grpc.status.FAILED_PRECONDITION,
  ENOSPC: grpc.status.RESOURCE_EXHAUSTED,
  ECOUNTER_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  ESTALE_EPOCH: grpc.status.FAILED_PRECONDITION,
  ESTALE_GENERATION: grpc.status.ABORTED,
  ETIMEDOUT: grpc.status.DEADLINE_EXCEEDED,
  ETRANSPORT: grpc.status.UNAVAILABLE,
  EPERM: grpc.status.PERMISSION_DENIED,
};

export function toGrpcError(err: unknown): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  if (err instanceof VskyError) {
    metadata.set('vsky-code', err.code);
    return { code: CODE_TO_STATUS[err.code] ?? grpc.status.INTERNAL, details: err.message, metadata };
  }
  metadata.set('vsky-code', 'EINTERNAL');
  return { code: grpc.status.INTERNAL, details: err instanceof Error ? err.message : String(err), metadata };
}

const CODE_TO_CLASS: Record<string, new (m: string) => VskyError> = {
  EINVAL: InvalidArgumentError, ENOTFOUND: NotFoundError, EEXIST: AlreadyExistsError,
  ECONFLICT: ConflictError, ENOSPC: CapacityError, ESTALE_EPOCH: StaleEpochError,
  ESTALE_GENERATION: StaleGenerationError, ETIMEDOUT: TimeoutError, ECOUNTER_EXHAUSTED: CounterExhaustedError,
  EPERM: PermissionDeniedError,
};

export function fromGrpcError(err: grpc.ServiceError): VskyError {
  const code = String(err.metadata?.get('vsky-code')[0] ?? '');
  const Cls = CODE_TO_CLASS[code];
  if (Cls) return new Cls(err.details);
  if (err.code === grpc.status.UNAVAILABLE && /SSL routines|certificate|daemon role/i.test(err.details)) {
    return new TransportError(`TLS handshake with the service failed: ${err.details}`, { tls: true }, { cause: err });
  }
  if (err.code === grpc.status.UNAVAILABLE) {
    return new TransportError(`cannot reach the service: ${err.details}`, {}, { cause: err });
  }
  if (err.code === grpc.status.DEADLINE_EXCEEDED) return new TimeoutError(`call timed out: ${err.details}`);
  return new VskyError(code || 'EINTERNAL', err.details || err.message);
}

/**
 * Adapts an async handler to a grpc-js unary handler with error mapping. The
 * handler runs as part of the caller's request id (x-request-id, or a new
 * one): its log lines carry it and its calls to other daemons forward it.
 */
export function unary<Req, Res>(fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (callObj, callback) => {
    const requestId = acceptRequestId(callObj.metadata.get(REQUEST_ID_KEY)[0]);
    runWithRequestId(requestId, () => fn(callObj.request)).then(
      (res) => callback(null, res),
      (err: unknown) => callback(toGrpcError(err)),
    );
  };
}

/**
 * Server reflection (grpcurl and other tools work without our .proto files)
 * and the standard grpc.health.v1 health service (SERVING for '' and the
 * daemon's service), on every daemon's gRPC server.
 */
export function addStandardServices(server: grpc.Server, protoFile: 'manager.proto' | 'storage_node.proto' | 'head_agent.proto', serviceName: string): HealthImplementation {
  const def = protoLoader.loadSync([join(PROTO_DIR, protoFile), healthProtoPath], { ...LOAD_OPTIONS, keepCase: true });
  new ReflectionService(def as unknown as ConstructorParameters<typeof ReflectionService>[0]).addToServer(server);
  const health = new HealthImplementation({ '': 'SERVING', [serviceName]: 'SERVING' });
  health.addToServer(server);
  return health;
}

/** Binds a server on HOST:PORT (port 0 picks one), with the process's credentials unless given others; resolves with the bound port. */
export function bindServer(server: grpc.Server, address: string, security?: GrpcSecurity): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, serverCredentials(security), (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export { grpc };
