import type { Option } from 'commander';

// The keys of a daemon's configuration file, derived from its command-line
// options so that options have one home (cli/commands/daemons.ts): the key of
// `--data-dir <dir>` is `data-dir`, of `--no-iscsi` is `iscsi` (false turns
// it off), and a repeatable option takes an array (or, for "key=value"
// options such as --label, a table). Pure: no commander state, no I/O.

/** Options a configuration file may not set: the file itself, and --help/--version. */
const NOT_KEYS = new Set(['config', 'help', 'version']);

const repeatable = new WeakSet<Option>();

/** Marks an option as repeatable: its configuration key takes an array. */
export function markRepeatable<O extends Option>(option: O): O {
  repeatable.add(option);
  return option;
}

export function isRepeatable(option: Option): boolean {
  return repeatable.has(option);
}

/** An option's key in a configuration file. */
export function configKey(option: Option): string {
  const name = option.name();
  return option.negate ? name.replace(/^no-/, '') : name;
}

/** True when the option takes no value on the command line (a flag). */
export function isFlag(option: Option): boolean {
  return !option.required && !option.optional;
}

/** The options of a command that have a configuration key, by key. */
export function keyedOptions(options: readonly Option[]): Map<string, Option> {
  const out = new Map<string, Option>();
  for (const o of options) {
    const key = configKey(o);
    if (!NOT_KEYS.has(key)) out.set(key, o);
  }
  return out;
}

/** What a configuration value turns into: command-line argument strings, or a flag's boolean. */
export type ConfigArgs = { kind: 'args'; values: string[] } | { kind: 'flag'; on: boolean };

function scalarArg(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  return undefined;
}

function typeName(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'a date';
  if (value !== null && typeof value === 'object') return 'a table';
  return `a ${typeof value}`;
}

/**
 * Converts the value of `key` from a configuration file into what the
 * command line would have carried for `option`; throws a message naming the
 * key and what it wants. Values are then checked by the option's own parser.
 */
export function toConfigArgs(key: string, option: Option, value: unknown): ConfigArgs {
  if (isFlag(option)) {
    if (typeof value !== 'boolean') throw new Error(`key "${key}" is true or false, not ${typeName(value)}`);
    // `iscsi = false` is --no-iscsi; `iscsi = true` is the default.
    return { kind: 'flag', on: option.negate ? !value : value };
  }
  if (isRepeatable(option)) {
    if (Array.isArray(value)) {
      return { kind: 'args', values: value.map((v, i) => {
        const s = scalarArg(v);
        if (s === undefined) throw new Error(`key "${key}": element ${i + 1} is ${typeName(v)}, expected a string`);
        return s;
      }) };
    }
    if (value !== null && typeof value === 'object' && !(value instanceof Date)) {
      return { kind: 'args', values: Object.entries(value).map(([k, v]) => {
        const s = scalarArg(v);
        if (s === undefined) throw new Error(`key "${key}.${k}" is ${typeName(v)}, expected a string`);
        return `${k}=${s}`;
      }) };
    }
    const s = scalarArg(value);
    if (s === undefined) throw new Error(`key "${key}" is ${typeName(value)}, expected an array of strings`);
    return { kind: 'args', values: [s] };
  }
  const s = scalarArg(value);
  if (s === undefined) throw new Error(`key "${key}" is ${typeName(value)}, expected ${option.flags.includes('<') ? 'a string or number' : 'a value'} like ${option.flags}`);
  return { kind: 'args', values: [s] };
}

/** "did you mean" for an unknown key: the known key with the smallest edit distance, if close. */
export function nearestKey(key: string, keys: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of keys) {
    const d = editDistance(key, k);
    if (d < bestDistance) { best = k; bestDistance = d; }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length]!;
}
