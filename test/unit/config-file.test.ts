import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Command, Option } from 'commander';
import { buildProgram } from '../../cli/program.js';
import { configKey, keyedOptions, nearestKey, toConfigArgs } from '../../cli/config/config-keys.js';
import { applyConfig, checkConfig, readConfigFile } from '../../cli/config/config-file.js';

// Configuration files of the daemons (cli/config/): keys derived from the
// commander options, flags override the file, unknown keys and bad values are
// errors, and the example files in deploy/config/ name every key.

const DAEMONS = ['manager', 'storage-node', 'head-agent'] as const;
const dir = mkdtempSync(join(tmpdir(), 'vsky-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** The daemon command of a fresh program, its action replaced so that parsing runs nothing. */
function daemon(name: string): { cmd: Command; parse: (args: string[]) => Promise<Record<string, unknown>>; errors: string[] } {
  const program = buildProgram().exitOverride();
  const cmd = program.commands.find((c) => c.name() === name)!;
  const errors: string[] = [];
  cmd.exitOverride().configureOutput({ writeErr: (s) => errors.push(s), writeOut: () => {} });
  let opts: Record<string, unknown> = {};
  cmd.action((o: Record<string, unknown>) => { opts = o; });
  return { cmd, errors, parse: async (args) => { await program.parseAsync(['node', 'vsky', name, ...args]); return opts; } };
}

describe('configuration keys', () => {
  it('are the long options; --no-X is X; --config, --help are not keys', () => {
    const { cmd } = daemon('head-agent');
    const keys = [...keyedOptions(cmd.options as Option[]).keys()];
    expect(keys).toContain('data-dir');
    expect(keys).toContain('iscsi');
    expect(keys).not.toContain('no-iscsi');
    expect(keys).not.toContain('config');
    expect(keys).not.toContain('help');
    const noIscsi = (cmd.options as Option[]).find((o) => o.long === '--no-iscsi')!;
    expect(configKey(noIscsi)).toBe('iscsi');
    expect(toConfigArgs('iscsi', noIscsi, false)).toEqual({ kind: 'flag', on: true });
    expect(() => toConfigArgs('iscsi', noIscsi, 'no')).toThrow(/"iscsi" is true or false, not a string/);
  });

  it('repeatable options take arrays, key=value options also tables; scalars refuse arrays', () => {
    const { cmd } = daemon('storage-node');
    const opt = (long: string) => (cmd.options as Option[]).find((o) => o.long === long)!;
    expect(toConfigArgs('disk', opt('--disk'), ['/a', '/b:1G'])).toEqual({ kind: 'args', values: ['/a', '/b:1G'] });
    expect(toConfigArgs('label', opt('--label'), { rack: 'r1', row: 2 })).toEqual({ kind: 'args', values: ['rack=r1', 'row=2'] });
    expect(() => toConfigArgs('name', opt('--name'), ['a'])).toThrow(/"name" is an array/);
    expect(() => toConfigArgs('disk', opt('--disk'), [{}])).toThrow(/element 1 is a table/);
    expect(nearestKey('data-prot', ['data-port', 'grpc-port'])).toBe('data-port');
    expect(nearestKey('zzzzzz', ['data-port'])).toBeUndefined();
  });
});

describe('--config FILE', () => {
  it('sets options through their own parsers (sizes, integers, labels, lists)', async () => {
    const f = file('sn.toml', 'data-dir = "/d"\nname = "s1"\ndata-port = 7000\nchunk-size = "64 MiB"\n'
      + 'disk = ["/x:1G", "/y"]\n[label]\nrack = "r1"\n');
    const o = await daemon('storage-node').parse(['--config', f]);
    expect(o).toMatchObject({ dataDir: '/d', name: 's1', dataPort: 7000, chunkSize: 64 * 1024 * 1024, disk: ['/x:1G', '/y'], label: { rack: 'r1' } });
  });

  it('flags override the file wherever they stand; a repeatable flag replaces the file\'s list', async () => {
    const f = file('sn2.toml', 'data-dir = "/d"\nname = "s1"\ndata-port = 7000\ndisk = ["/x", "/y"]\n');
    const after = await daemon('storage-node').parse(['--config', f, '--name', 's2', '--disk', '/z']);
    expect(after).toMatchObject({ dataDir: '/d', name: 's2', dataPort: 7000, disk: ['/z'] });
    const before = await daemon('storage-node').parse(['--name', 's3', '--data-port', '1', '--config', f]);
    expect(before).toMatchObject({ name: 's3', dataPort: 1, disk: ['/x', '/y'] });
    const twice = await daemon('storage-node').parse(['--config', f, '--disk', '/z', '--disk', '/w']);
    expect(twice.disk).toEqual(['/z', '/w']);
  });

  it('a required option may come from the file; a negated flag is key = false', async () => {
    const f = file('h.toml', 'data-dir = "/h"\niscsi = false\nrebuild-from-storage = true\n');
    const m = daemon('manager');
    await expect(m.parse(['--config', f])).rejects.toThrow(/unknown key "iscsi"/);
    const h = file('h2.toml', 'data-dir = "/h"\niscsi = false\n');
    expect(await daemon('head-agent').parse(['--config', h])).toMatchObject({ dataDir: '/h', iscsi: false });
    const missing = daemon('head-agent');
    await expect(missing.parse(['--config', file('empty.toml', '# nothing\n')])).rejects.toThrow(/--data-dir <dir>' not specified/);
  });

  it('unknown keys, bad values, bad TOML and missing files are clear errors (exit 2) naming the file and key', async () => {
    const cases: Array<[string, RegExp]> = [
      ['data-dir = "/d"\ndata-prot = 1\n', /bad1\.toml: unknown key "data-prot" \(did you mean "data-port"\?\); keys of `vsky storage-node`: data-dir,/],
      ['data-dir = "/d"\ndata-port = "x"\n', /bad2\.toml: key "data-port": "x": "x" is not a non-negative integer/],
      ['data-dir = "/d"\nchunk-size = "lots"\n', /bad3\.toml: key "chunk-size": "lots": /],
      ['data-dir = "/d"\nlabel = ["nolabel"]\n', /bad4\.toml: key "label": "nolabel": label "nolabel" must look like key=value/],
      ['data-dir = \n', /bad5\.toml: not valid TOML \(line 1, column \d+\)/],
      ['data-dir = "/d"\nmanager = "nohostport"\n', /bad6\.toml: key "manager": "nohostport": /],
    ];
    for (const [i, [text, re]] of cases.entries()) {
      const d = daemon('storage-node');
      const f = file(`bad${i + 1}.toml`, text);
      await expect(d.parse(['--config', f])).rejects.toMatchObject({ exitCode: 2 });
      expect(d.errors.join(''), text).toMatch(re);
    }
    const d = daemon('storage-node');
    await expect(d.parse(['--config', join(dir, 'nope.toml')])).rejects.toMatchObject({ exitCode: 2 });
    expect(d.errors.join('')).toMatch(/nope\.toml: cannot read the configuration file: ENOENT/);
  });

  it('a bad file sets nothing (the check runs over every key before any is set)', () => {
    const { cmd } = daemon('storage-node');
    expect(() => applyConfig(cmd, { name: 'changed', 'data-port': 'x' })).toThrow(/data-port/);
    expect(cmd.getOptionValue('name')).toBe('node');
  });

  it('checkConfig (vsky doctor) gives the same errors and never sets anything, even for a good file', () => {
    const { cmd } = daemon('storage-node');
    expect(() => checkConfig(cmd, { diks: ['a'] })).toThrow(/unknown key "diks" \(did you mean "disk"\?\)/);
    expect(() => checkConfig(cmd, { 'heartbeat-interval': 'soon' })).toThrow(/key "heartbeat-interval": "soon"/);
    checkConfig(cmd, { name: 'changed', disk: ['/x:1G'] });
    expect(cmd.getOptionValue('name')).toBe('node');
    expect(cmd.getOptionValueSource('name')).not.toBe('config');
  });
});

describe('deploy/config examples', () => {
  for (const name of DAEMONS) {
    it(`${name}.toml names every key of \`vsky ${name}\` and applies cleanly`, async () => {
      const path = join('deploy', 'config', `${name}.toml`);
      const text = readFileSync(path, 'utf8');
      const { cmd, parse } = daemon(name);
      for (const key of keyedOptions(cmd.options as Option[]).keys()) {
        expect(text, `${path} documents ${key}`).toMatch(new RegExp(`^#? ?${key} = `, 'm'));
      }
      expect(Object.keys(readConfigFile(path)).length).toBeGreaterThan(2);
      const o = await parse(['--config', path]);
      expect(typeof o.dataDir).toBe('string');
    });
  }
});
