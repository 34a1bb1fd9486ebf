import { InvalidArgumentError as CommanderInvalid, Option } from 'commander';
import { formatSizeExact, parseHostPort, parseSize } from '../shared/units.js';
import { errorMessage } from '../shared/errors.js';
import { markRepeatable } from './config/config-keys.js';

// Commander argument parsers that turn bad input into a clear usage error
// (commander prints it with the option name and exits 1 before anything runs).

export function sizeArg(value: string): number {
  try { return parseSize(value); } catch (e) { throw new CommanderInvalid(errorMessage(e)); }
}

/** A size option whose --help shows its default in units ("2 GiB"), not as a byte count. */
export function sizeOption(flags: string, description: string, defaultBytes: number): Option {
  return new Option(flags, description).argParser(sizeArg).default(defaultBytes, formatSizeExact(defaultBytes));
}

export function intArg(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new CommanderInvalid(`"${value}" is not a non-negative integer`);
  }
  return n;
}

export function positiveIntArg(value: string): number {
  const n = intArg(value);
  if (n === 0) throw new CommanderInvalid('must be at least 1');
  return n;
}

export function hostPortArg(value: string): string {
  try { parseHostPort(value); return value; } catch (e) { throw new CommanderInvalid(errorMessage(e)); }
}

/** A repeatable "key=value" label option; --help says "none" rather than "{}". */
export function labelOption(flags: string, description: string): Option {
  return markRepeatable(new Option(flags, description).argParser(labelArg).default({}, 'none'));
}

/** A repeatable option collecting its values; --help says "none" rather than "[]". */
export function repeatableOption(flags: string, description: string, parse: (value: string, previous?: string[]) => string[] = collect): Option {
  return markRepeatable(new Option(flags, description).argParser(parse).default([], 'none'));
}

/** Repeatable "key=value" option accumulator. */
export function labelArg(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const m = /^([A-Za-z0-9_.-]+)=(.*)$/.exec(value);
  if (!m) throw new CommanderInvalid(`label "${value}" must look like key=value, e.g. rack=r1`);
  return { ...previous, [m[1]!]: m[2]! };
}

/** Repeatable option accumulator. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
