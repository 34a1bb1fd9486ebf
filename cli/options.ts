import { InvalidArgumentError as CommanderInvalid } from 'commander';
import { parseHostPort, parseSize } from '../shared/units.js';
import { errorMessage } from '../shared/errors.js';

// Commander argument parsers that turn bad input into a clear usage error
// (commander prints it with the option name and exits 1 before anything runs).

export function sizeArg(value: string): number {
  try { return parseSize(value); } catch (e) { throw new CommanderInvalid(errorMessage(e)); }
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
