import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readConfigFile } from '../../cli/config/config-file.js';
import { tryRun } from '../harness/tools.js';
import { UNIT_DIR, UNIT_OF, execStart, readUnit, unitValue, type DaemonName } from '../harness/systemd-unit.js';

// deploy/systemd/: the three daemons' units pass `systemd-analyze verify`
// (Debian's systemd package, deploy/install-deps.sh), start the daemon from
// its configuration file, restart it on failure, raise LimitNOFILE, harden it
// without hiding the storage node's block devices, and let each daemon write
// its data directory (the example configuration's data-dir).

const DAEMONS = Object.keys(UNIT_OF) as DaemonName[];
const analyzer = await tryRun('systemd-analyze', ['--version']);
const haveAnalyzer = analyzer.exitCode === 0;
const tmp = mkdtempSync(join(tmpdir(), 'vsky-units-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('deploy/systemd units', () => {
  it.skipIf(!haveAnalyzer)('pass systemd-analyze verify with no complaint', async () => {
    const r = await tryRun('systemd-analyze', ['verify', ...DAEMONS.map((d) => join(UNIT_DIR, UNIT_OF[d]))]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(String(r.stderr).trim(), 'verify prints warnings (unknown keys, bad values) on stderr').toBe('');
  });

  it.skipIf(!haveAnalyzer)('premise: systemd-analyze verify does catch a broken unit', async () => {
    const bad = join(tmp, 'vsky-bad.service');
    writeFileSync(bad, readFileSync(join(UNIT_DIR, UNIT_OF.manager), 'utf8').replace('LimitNOFILE=', 'LimitNOFILES='));
    const r = await tryRun('systemd-analyze', ['verify', bad]);
    expect(String(r.stderr)).toMatch(/Unknown key 'LimitNOFILES'/);
    const badExec = join(tmp, 'vsky-badexec.service');
    writeFileSync(badExec, readFileSync(join(UNIT_DIR, UNIT_OF.manager), 'utf8').replace('ExecStart=/usr/bin/node', 'ExecStart=/usr/bin/no-such-node'));
    expect((await tryRun('systemd-analyze', ['verify', badExec])).exitCode).not.toBe(0);
  });

  for (const daemon of DAEMONS) {
    it(`${UNIT_OF[daemon]} starts \`vsky ${daemon} --config\`, restarts, is hardened and can write its data directory`, () => {
      const unit = readUnit(daemon);
      expect(execStart(unit).slice(-3)).toEqual([daemon, '--config', `/etc/vsky/${daemon}.toml`]);
      expect(unitValue(unit, 'Restart')).toBe('on-failure');
      expect(Number(unitValue(unit, 'LimitNOFILE'))).toBeGreaterThanOrEqual(65536);
      for (const [key, value] of [['NoNewPrivileges', 'yes'], ['PrivateTmp', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes']]) {
        expect(unitValue(unit, key!), key).toBe(value);
      }
      expect(unitValue(unit, 'CapabilityBoundingSet')).toBe('');
      // The storage node opens block devices: /dev must stay visible.
      expect(unitValue(unit, 'PrivateDevices')).toBe(daemon === 'storage-node' ? 'no' : 'yes');
      if (daemon === 'storage-node') expect(unitValue(unit, 'SupplementaryGroups')).toBe('disk');
      // ProtectSystem=strict: only the state directories (and /dev) are writable; the example's data-dir must be one.
      const writable = (unitValue(unit, 'StateDirectory') ?? '').split(/\s+/).map((d) => `/var/lib/${d}`);
      const example = readConfigFile(join('deploy', 'config', `${daemon}.toml`));
      expect(writable).toContain(example['data-dir']);
    });
  }
});
