import type { ManagerCore } from '../core.js';
import { handleBody } from './dispatch.js';
import type { XmlRpcContext } from './context.js';
import type { IntIds } from './ids.js';
import { startXmlRpcServer, type XmlRpcServerHandle, type XmlRpcServerOptions } from './server.js';

// VastSky 3.0's XML-RPC API on the manager (docs/xmlrpc.md).

export { IntIds } from './ids.js';
export { xmlRpcMethodNames } from './dispatch.js';
export { DEFAULT_XMLRPC_ADDRESS, DEFAULT_XMLRPC_PORT, type XmlRpcServerHandle, type XmlRpcServerOptions } from './server.js';

export function startXmlRpc(core: ManagerCore, ids: IntIds, opts: XmlRpcServerOptions, onCall?: XmlRpcContext['onCall']): Promise<XmlRpcServerHandle> {
  const ctx: XmlRpcContext = { core, ids, onCall };
  return startXmlRpcServer(opts, (body) => handleBody(ctx, body));
}
