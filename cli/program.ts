import { Command } from 'commander';
import { registerDaemonCommands } from './commands/daemons.js';
import { registerServerCommands } from './commands/server.js';
import { registerDiskCommands } from './commands/disk.js';
import { registerVolumeCommands } from './commands/volume.js';
import { registerStatusCommand } from './commands/status.js';
import { registerClusterCommands } from './commands/cluster.js';
import { registerResyncCommands } from './commands/resync.js';
import { registerEventsCommand } from './commands/events.js';
import { registerJobCommands } from './commands/job.js';
import { registerCopyCommand } from './commands/copy.js';
import { registerSnapshotCommands } from './commands/snapshot.js';
import { registerDoctorCommand } from './commands/doctor.js';
import { registerCaCommands } from './commands/ca.js';

export function buildProgram(): Command {
  const program = new Command('vsky')
    .description('VastSky-TS: chunk-mirrored block storage for virtualization hosts')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .showSuggestionAfterError();
  registerClusterCommands(program);
  registerDaemonCommands(program);
  registerServerCommands(program);
  registerDiskCommands(program);
  registerVolumeCommands(program);
  registerResyncCommands(program);
  registerStatusCommand(program);
  registerEventsCommand(program);
  registerJobCommands(program); // after the volume commands: adds volume wipe|resize|recon
  registerCopyCommand(program); // volume copy
  registerSnapshotCommands(program); // snapshot ..., volume clone
  registerDoctorCommand(program);
  registerCaCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  await buildProgram().parseAsync(argv);
}
