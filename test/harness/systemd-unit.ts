import { readFileSync } from 'node:fs';
import { join } from 'node:path';

// Reads the systemd units of deploy/systemd/ as systemd does for the keys the
// tests look at: sections of "Key=value" lines, '#' and ';' comments, a key
// may repeat. The install rehearsal starts each daemon with its unit's own
// ExecStart line; the units test checks their settings.

export type Unit = Map<string, Map<string, string[]>>;

export const UNIT_DIR = join('deploy', 'systemd');
export const UNIT_OF = { manager: 'vsky-manager.service', 'storage-node': 'vsky-storage-node.service', 'head-agent': 'vsky-head-agent.service' } as const;
export type DaemonName = keyof typeof UNIT_OF;

export function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = unit.get(header[1]!) ?? new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const eq = line.indexOf('=');
    if (!section || eq < 0) throw new Error(`not a unit file line: ${raw}`);
    const key = line.slice(0, eq).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return unit;
}

export function readUnit(daemon: DaemonName): Unit {
  return parseUnit(readFileSync(join(UNIT_DIR, UNIT_OF[daemon]), 'utf8'));
}

/** The last value of a [Service] (or other section) key. */
export function unitValue(unit: Unit, key: string, section = 'Service'): string | undefined {
  return unit.get(section)?.get(key)?.at(-1);
}

/** ExecStart split into words (the units use no quoting). */
export function execStart(unit: Unit): string[] {
  const line = unitValue(unit, 'ExecStart');
  if (!line) throw new Error('the unit has no ExecStart');
  return line.split(/\s+/);
}
