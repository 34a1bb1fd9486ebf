import type { Command } from 'commander';
import { DEFAULT_MANAGER_ADDRESS } from '../shared/constants.js';
import { call, managerClient, type ManagerClient } from '../shared/grpc.js';
import { isValidRequestId, newRequestId, setProcessRequestId } from '../shared/request-id.js';
import { InvalidArgumentError as CommanderInvalid } from 'commander';
import { hostPortArg } from './options.js';
import { reportError } from './output.js';
import { addTlsOptions, applyClientTls, type TlsFlags } from './tls-options.js';

// Shared plumbing of the admin commands: every one takes --manager and
// --json, talks to the manager over gRPC, and reports errors the same way.

export interface AdminOptions extends TlsFlags { manager: string; json?: boolean; requestId?: string }

function requestIdArg(value: string): string {
  if (!isValidRequestId(value)) throw new CommanderInvalid(`"${value}" is not a request id: 1 to 128 letters, digits or ._:@/+=-`);
  return value;
}

/** The CLI's certificate in --tls-dir. */
export const CLI_CERT_NAME_HELP = '"admin", or $VSKY_TLS_NAME';

export function adminCommand(parent: Command, name: string, description: string): Command {
  return addTlsOptions(parent.command(name)
    .description(description)
    .option('--manager <host:port>', 'manager address', hostPortArg, process.env.VSKY_MANAGER ?? DEFAULT_MANAGER_ADDRESS)
    .option('--json', 'print JSON for scripts')
    .option('--request-id <id>', 'request id the manager and the daemons it calls log this call under '
      + '(gRPC metadata x-request-id; default: $VSKY_REQUEST_ID, else a new one)', requestIdArg), CLI_CERT_NAME_HELP);
}

/** Runs `fn` against the manager; closes the client; reports errors with a non-zero exit. */
export async function withManager(o: AdminOptions, fn: (m: ManagerClient) => Promise<void>): Promise<void> {
  const envId = process.env.VSKY_REQUEST_ID;
  const requestId = o.requestId ?? (envId && isValidRequestId(envId) ? envId : newRequestId());
  setProcessRequestId(requestId);
  let client: ManagerClient;
  try {
    applyClientTls(o);
    client = managerClient(o.manager);
  } catch (err) {
    reportError(err, o.json);
    return;
  }
  try {
    await fn(client);
  } catch (err) {
    reportError(err, o.json, requestId);
  } finally {
    client.close();
  }
}

export { call };
