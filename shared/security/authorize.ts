import * as grpc from '@grpc/grpc-js';
import { moduleLogger } from '../logger.js';
import { identityOf, type PeerIdentity } from './identity.js';
import { rolesAllowed } from './policy.js';
import { processGrpcSecurity, type GrpcSecurity } from './credentials.js';

// Enforces shared/security/policy.ts on a gRPC server: a server interceptor
// reads the verified client certificate of the connection (the TLS layer has
// already checked it chains to the cluster CA), and lets a call through only
// if the certificate's role may call the method and, where the daemon knows
// how (selfCheck), the request acts for the certificate's holder (a head's
// certificate for its own head only). A refusal is PERMISSION_DENIED naming
// the role and the method, logged as a warning; the handler never runs.

const log = moduleLogger('authz');

/** A reason to refuse a request acting for someone other than the caller, or undefined. */
export type SelfCheck = (method: string, request: unknown, caller: PeerIdentity) => string | undefined;

export interface AuthorizeOptions {
  /** The daemon's own checks that the request acts for the caller (manager: heads act for themselves). */
  selfCheck?: SelfCheck;
}

function refusal(path: string, caller: PeerIdentity | undefined, request: unknown, opts: AuthorizeOptions): string | undefined {
  if (!caller) return `permission denied for ${path}: the client certificate carries no vsky role (issue one with \`vsky ca issue\`)`;
  const allowed = rolesAllowed(path);
  if (!allowed.includes(caller.role)) {
    return `permission denied: role ${caller.role} (certificate "${caller.name}") may not call ${path} (allowed: ${allowed.join(', ')})`;
  }
  const method = path.slice(path.lastIndexOf('/') + 1);
  const self = caller.role === 'admin' ? undefined : opts.selfCheck?.(method, request, caller);
  return self === undefined ? undefined : `permission denied: role ${caller.role} (certificate "${caller.name}") may not call ${path} for ${self}`;
}

export function authorizationInterceptor(opts: AuthorizeOptions = {}): grpc.ServerInterceptor {
  return (descriptor, call) => {
    const path = descriptor.path;
    let refused = false;
    const intercepting: grpc.ServerInterceptingCall = new grpc.ServerInterceptingCall(call, {
      start: (next) => next({
        onReceiveMessage: (message: unknown, nextMessage) => {
          if (refused) return;
          const caller = identityOf(call.getAuthContext().sslPeerCertificate);
          const reason = refusal(path, caller, message, opts);
          if (reason === undefined) { nextMessage(message); return; }
          refused = true;
          log.warn({ method: path, role: caller?.role, cert: caller?.name, peer: call.getPeer() }, reason);
          const metadata = new grpc.Metadata();
          metadata.set('vsky-code', 'EPERM');
          intercepting.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: reason, metadata });
        },
        onReceiveHalfClose: (nextHalfClose) => { if (!refused) nextHalfClose(); },
      }),
    });
    return intercepting;
  };
}

/**
 * A gRPC server for a daemon: with TLS, every call goes through the
 * authorization interceptor; plain gRPC (--insecure) has no identities to check.
 */
export function newDaemonServer(options: grpc.ServerOptions = {}, authz: AuthorizeOptions = {}, sec: GrpcSecurity = processGrpcSecurity()): grpc.Server {
  if (sec.kind === 'insecure') return new grpc.Server(options);
  return new grpc.Server({ ...options, interceptors: [...(options.interceptors ?? []), authorizationInterceptor(authz)] });
}
