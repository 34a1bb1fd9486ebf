import type { PeerCertificate } from 'node:tls';

// Who a certificate says its holder is. A cluster certificate (shared/security/ca.ts)
// carries the holder's name as its subject CN and its role as a SAN URI
// "vsky:role:ROLE" (also its subject OU, for people reading it with openssl).
// The role decides what the holder may call (shared/security/policy.ts).

export const ROLES = ['admin', 'readonly', 'head', 'node', 'manager'] as const;
export type Role = (typeof ROLES)[number];

/** The roles daemons serve gRPC under: a client checks the server it reached holds one. */
export const DAEMON_ROLES: readonly Role[] = ['manager', 'node', 'head'];

export const ROLE_URI_PREFIX = 'vsky:role:';

export interface PeerIdentity {
  /** The certificate's subject CN: a daemon's name (manager, node1, head1) or a person's. */
  name: string;
  role: Role;
}

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

/** The role in a SAN string as Node prints it ("URI:vsky:role:admin, DNS:x"), or undefined. */
export function roleFromSan(subjectaltname: string | undefined): Role | undefined {
  for (const part of (subjectaltname ?? '').split(',')) {
    const entry = part.trim();
    if (!entry.startsWith(`URI:${ROLE_URI_PREFIX}`)) continue;
    const role = entry.slice(`URI:${ROLE_URI_PREFIX}`.length);
    if (isRole(role)) return role;
  }
  return undefined;
}

function subjectCn(cert: PeerCertificate): string {
  const cn = cert.subject?.CN as string | string[] | undefined;
  return Array.isArray(cn) ? (cn[0] ?? '') : (cn ?? '');
}

/** The identity of a verified peer certificate; undefined when it carries no vsky role. */
export function identityOf(cert: PeerCertificate | undefined): PeerIdentity | undefined {
  if (!cert || Object.keys(cert).length === 0) return undefined;
  const role = roleFromSan(cert.subjectaltname);
  return role === undefined ? undefined : { name: subjectCn(cert), role };
}
