import { resolve } from 'node:path';
import { InvalidArgumentError as CommanderInvalid, Option, type Command } from 'commander';
import { ROLES, isRole, type Role } from '../../shared/security/identity.js';
import { DEFAULT_CERT_DAYS, initCa, issueCert } from '../../shared/security/ca.js';
import { emit } from '../output.js';
import { positiveIntArg, repeatableOption } from '../options.js';
import { reportError } from '../output.js';

// `vsky ca init|issue`: the cluster certificate authority for mutual TLS on
// every gRPC connection (docs/security.md). The CA directory holds ca.key:
// keep it off the daemons' hosts once their certificates are issued.

function roleArg(value: string): Role {
  if (!isRole(value)) throw new CommanderInvalid(`"${value}" is not a role: one of ${ROLES.join(', ')}`);
  return value;
}

async function run(json: boolean | undefined, fn: () => Promise<void>): Promise<void> {
  try { await fn(); } catch (err) { reportError(err, json); }
}

export function registerCaCommands(program: Command): void {
  const ca = program.command('ca').description('the cluster certificate authority: mutual TLS for gRPC (docs/security.md)');

  ca.command('init')
    .description('make a CA (ca.crt, ca.key mode 0600) in a new directory')
    .requiredOption('--dir <dir>', 'directory for the CA (created mode 0700)')
    .option('--days <n>', 'validity of the CA certificate in days', positiveIntArg, 3650)
    .option('--json', 'print JSON for scripts')
    .action((o) => run(o.json, async () => {
      const r = await initCa(resolve(o.dir as string), { days: o.days });
      emit(o, r, () => process.stdout.write(`CA made: ${r.cert} (key ${r.key}, mode 0600)\n`
        + `Next: vsky ca issue --dir ${o.dir} --role manager --name manager --host MANAGER_IP, one per daemon, and --role admin for people.\n`));
    }));

  ca.command('issue')
    .description('issue a certificate (NAME.crt, NAME.key mode 0600) whose role says what its holder may call')
    .requiredOption('--dir <dir>', 'the CA directory (vsky ca init)')
    .addOption(new Option('--role <role>', `what the holder may do: ${ROLES.join(', ')}`).argParser(roleArg).makeOptionMandatory())
    .requiredOption('--name <name>', 'the holder: a daemon\'s --name (manager, node1, head1) or a person; a head certificate acts only for the head of that name')
    .addOption(repeatableOption('--host <ip-or-dns>', 'an address clients reach this daemon at (repeatable; checked by clients: '
      + 'needed for manager, node and head certificates)'))
    .option('--out <dir>', 'where NAME.crt/NAME.key go, with a copy of ca.crt: a complete --tls-dir (default: the CA directory)')
    .option('--days <n>', 'validity in days', positiveIntArg, DEFAULT_CERT_DAYS)
    .option('--force', 'replace an existing certificate of that name')
    .option('--json', 'print JSON for scripts')
    .action((o) => run(o.json, async () => {
      const hosts = o.host as string[];
      const role = o.role as Role;
      if (hosts.length === 0 && (role === 'manager' || role === 'node' || role === 'head')) {
        process.stderr.write(`vsky ca issue: warning: a ${role} certificate without --host: clients will refuse it (they check the address they dial)\n`);
      }
      const r = await issueCert(resolve(o.dir as string), {
        role, name: o.name, hosts, days: o.days, outDir: o.out === undefined ? undefined : resolve(o.out as string), force: o.force === true,
      });
      emit(o, r, () => process.stdout.write(`issued ${r.cert} (key ${r.key}) for ${r.name}, role ${r.role}${r.hosts.length ? `, hosts ${r.hosts.join(', ')}` : ''}, valid until ${r.notAfter}\n`));
    }));
}
