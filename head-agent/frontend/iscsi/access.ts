// Who may log in to a target. iSCSI names compare without regard to case
// (RFC 7143 4.2.7.2: names are normalized to lower case, RFC 3722), so an
// ACL entry written in any case matches the initiator's name.

import type { IscsiTarget } from './target-registry.js';

export function sameIscsiName(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** True when `initiator` may log in to `target`: its ACL is empty or names it. */
export function mayAccess(target: IscsiTarget, initiator: string): boolean {
  const acl = target.access.initiators;
  return acl.length === 0 || acl.some((name) => sameIscsiName(name, initiator));
}
