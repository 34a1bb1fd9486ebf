import type { Command } from 'commander';
import { DEFAULT_MANAGER_ADDRESS } from '../shared/constants.js';
import { call, managerClient, type ManagerClient } from '../shared/grpc.js';
import { hostPortArg } from './options.js';
import { reportError } from './output.js';

// Shared plumbing of the admin commands: every one takes --manager and
// --json, talks to the manager over gRPC, and reports errors the same way.

export interface AdminOptions { manager: string; json?: boolean }

export function adminCommand(parent: Command, name: string, description: string): Command {
  return parent.command(name)
    .description(description)
    .option('--manager <host:port>', 'manager address', hostPortArg, process.env.VSKY_MANAGER ?? DEFAULT_MANAGER_ADDRESS)
    .option('--json', 'print JSON for scripts');
}

/** Runs `fn` against the manager; closes the client; reports errors with a non-zero exit. */
export async function withManager(o: AdminOptions, fn: (m: ManagerClient) => Promise<void>): Promise<void> {
  const client = managerClient(o.manager);
  try {
    await fn(client);
  } catch (err) {
    reportError(err, o.json);
  } finally {
    client.close();
  }
}

export { call };
