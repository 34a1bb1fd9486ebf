import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { DEFAULT_MANAGER_ADDRESS } from '../../shared/constants.js';
import { errorMessage } from '../../shared/errors.js';
import { managerClient } from '../../shared/grpc.js';
import { newRequestId, setProcessRequestId } from '../../shared/request-id.js';
import { clusterFindings, defaultMaxClockSkewMs } from '../doctor/cluster-checks.js';
import { takeSnapshot } from '../doctor/cluster-snapshot.js';
import { finding, isProblem, renderFindings, sortFindings, type Finding } from '../doctor/findings.js';
import { DEFAULT_CONFIGS, hostFindings, type ConfigValidator } from '../doctor/host-checks.js';
import { checkConfig } from '../config/config-file.js';
import { hostPortArg, intArg, repeatableOption } from '../options.js';
import { printJson } from '../output.js';
import { addTlsOptions, applyClientTls, type TlsFlags } from '../tls-options.js';
import { CLI_CERT_NAME_HELP } from '../admin.js';

// `vsky doctor`: what commonly goes wrong on a host and in the cluster, each
// finding with what to do; exit 1 when anything is a problem.

interface DoctorOptions extends TlsFlags {
  manager: string; json?: boolean; config: string[]; cluster: boolean; host: boolean;
  maxClockSkew?: number; diskFull: number; fsFree: number; certDays: number; timeout: number;
}

export function registerDoctorCommand(program: Command): void {
  const cmd = program.command('doctor')
    .description('check this host and the cluster for what commonly goes wrong (unreachable or failed servers and heads, '
      + 'failed or nearly full disks, degraded and DIRTY volumes, clock skew, full file systems, expiring certificates) '
      + 'and say what to do; exits 1 when it finds a problem')
    .option('--manager <host:port>', 'manager address', hostPortArg, process.env.VSKY_MANAGER ?? DEFAULT_MANAGER_ADDRESS)
    .option('--json', 'print the findings as JSON')
    .addOption(repeatableOption('--config <file>', `daemon configuration files of this host to check (repeatable; default: those of ${DEFAULT_CONFIGS.join(', ')} that exist)`))
    .option('--no-cluster', 'host checks only (do not ask the manager)')
    .option('--no-host', 'cluster checks only')
    .option('--max-clock-skew <ms>', 'clock offset allowed between the manager and a head or this host (default: a quarter of the manager\'s lease TTL)', intArg)
    .option('--disk-full <percent>', 'a disk with this share of its chunks allocated is near full; also the pool threshold minus 10', intArg, 90)
    .option('--fs-free <percent>', 'a file system with less free space than this is near full', intArg, 10)
    .option('--cert-days <days>', 'warn about certificates expiring within this many days', intArg, 30)
    .option('--timeout <ms>', 'deadline of each call to the manager', intArg, 5_000)
    .action(async (o: DoctorOptions) => {
      setProcessRequestId(process.env.VSKY_REQUEST_ID ?? newRequestId());
      const findings: Finding[] = [];
      if (o.cluster) findings.push(...await clusterChecks(o));
      if (o.host) {
        const configs = o.config.length > 0 ? o.config : DEFAULT_CONFIGS.filter((f) => existsSync(f));
        findings.push(...await hostFindings(configs, { fsFree: o.fsFree / 100, certDays: o.certDays, nowMs: Date.now() }, configValidator(program)));
      }
      const problems = findings.filter(isProblem).length;
      if (o.json) printJson({ ok: problems === 0, problems, findings: sortFindings(findings) });
      else process.stdout.write(renderFindings(findings));
      process.exitCode = problems === 0 ? 0 : 1;
    });
  addTlsOptions(cmd, CLI_CERT_NAME_HELP);
}

/** A daemon's configuration file checked as `vsky DAEMON --config FILE` would check it (nothing is set or started). */
function configValidator(program: Command): ConfigValidator {
  return (daemon, values) => {
    const cmd = program.commands.find((c) => c.name() === daemon);
    if (!cmd) return undefined;
    try {
      checkConfig(cmd, values);
      return undefined;
    } catch (err) {
      return errorMessage(err);
    }
  };
}

async function clusterChecks(o: DoctorOptions): Promise<Finding[]> {
  let client: ReturnType<typeof managerClient>;
  try {
    applyClientTls(o);
    client = managerClient(o.manager);
  } catch (err) {
    return [finding('manager', 'error', o.manager, `cannot ask the manager: ${errorMessage(err)}`, 'pass --tls-dir DIR (docs/security.md)')];
  }
  try {
    const snapshot = await takeSnapshot(client, o.manager, o.timeout);
    return [finding('manager', 'ok', o.manager, 'reachable'), ...clusterFindings(snapshot, {
      diskFull: o.diskFull / 100, poolFull: (o.diskFull - 10) / 100,
      maxClockSkewMs: o.maxClockSkew ?? defaultMaxClockSkewMs(snapshot.status.leaseTtlMs),
    })];
  } catch (err) {
    return [finding('manager', 'error', o.manager, `cannot ask the manager: ${errorMessage(err)}`,
      'on the manager host: systemctl status vsky-manager; journalctl -u vsky-manager; check --manager and the firewall (port 7700)')];
  } finally {
    client.close();
  }
}
