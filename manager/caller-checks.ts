import type { SelfCheck } from '../shared/security/authorize.js';
import type { Registry } from './registry.js';

// With TLS, a head's certificate may act only for that head (its subject CN is
// the head's name): RegisterHead must carry that name and may not take over
// another head's id; the calls naming a head by id (heartbeat, lease, replica
// failure and job reports) must name a head registered under that name. A
// head id the manager does not know passes here: the handler refuses it or
// asks the head to register (which is checked). Storage nodes register under
// their certificate's name the same way.

interface Named { name?: string; headId?: string }

const HEAD_ID_METHODS = new Set(['HeadHeartbeat', 'AcquireLease', 'ReportReplicaFailure', 'ReportJob', 'AllocateSegment', 'FreeSegment']);

export function managerSelfCheck(registry: Registry): SelfCheck {
  return (method, request, caller) => {
    const req = (request ?? {}) as Named;
    if (caller.role === 'head') {
      if (method === 'RegisterHead') {
        if (req.name !== caller.name) return `head "${req.name ?? ''}" (a head certificate acts only for its own head)`;
        const known = req.headId ? registry.head(req.headId) : undefined;
        if (known && known.name !== caller.name) return `head id ${req.headId}, registered as "${known.name}"`;
        return undefined;
      }
      if (HEAD_ID_METHODS.has(method) && req.headId) {
        const known = registry.head(req.headId);
        if (known && known.name !== caller.name) return `head "${known.name}" (id ${req.headId}; a head certificate acts only for its own head)`;
      }
      return undefined;
    }
    if (caller.role === 'node' && method === 'RegisterServer' && req.name !== undefined && req.name !== caller.name) {
      return `server "${req.name}" (a node certificate registers only its own server)`;
    }
    return undefined;
  };
}
