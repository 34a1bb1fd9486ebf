import { readFileSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { parse, TomlError } from 'smol-toml';
import { errorMessage } from '../../shared/errors.js';
import { keyedOptions, nearestKey, toConfigArgs } from './config-keys.js';

// `--config FILE` for the daemon commands: a TOML file whose keys are the
// command's long options (cli/config/config-keys.ts). It is read when
// commander meets --config, before the command's required options are
// checked; a value from the file is used only where the command line did not
// set the option, so flags override the file wherever they stand. Each value
// goes through the option's own parser, so a bad value in the file gets the
// same error as on the command line, prefixed with the file and key. Unknown
// keys are errors (a typo must not silently leave a default in place).

/** Values that came from a configuration file; a repeatable option given on the command line starts afresh from them. */
const fromFile = new WeakSet<object>();

/** Reads and parses a TOML configuration file; throws a message with the line on failure (the caller names the file). */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the configuration file: ${errorMessage(err)}`);
  }
  try {
    return parse(text) as Record<string, unknown>;
  } catch (err) {
    const where = err instanceof TomlError ? ` (line ${err.line}, column ${err.column})` : '';
    throw new Error(`not valid TOML${where}: ${errorMessage(err).split('\n')[0]}`);
  }
}

/**
 * Sets the options of `cmd` from `values` (a parsed configuration file),
 * except those the command line already set. Throws on an unknown key or a
 * bad value; sets nothing then.
 */
export function applyConfig(cmd: Command, values: Record<string, unknown>): void {
  for (const p of planConfig(cmd, values)) cmd.setOptionValueWithSource(p.attr, p.value, 'config');
}

/**
 * Checks `values` (a parsed configuration file) against the options of `cmd`
 * as --config would, without setting anything: throws the same message on an
 * unknown key or a bad value (`vsky doctor` uses it on the host's files).
 */
export function checkConfig(cmd: Command, values: Record<string, unknown>): void {
  planConfig(cmd, values);
}

/** The option values a configuration file sets (those the command line did not); throws on an unknown key or a bad value. */
function planConfig(cmd: Command, values: Record<string, unknown>): Array<{ attr: string; value: unknown }> {
  const byKey = keyedOptions(cmd.options as Option[]);
  const planned: Array<{ attr: string; value: unknown }> = [];
  for (const [key, raw] of Object.entries(values)) {
    const option = byKey.get(key);
    if (!option) {
      const near = nearestKey(key, byKey.keys());
      throw new Error(`unknown key "${key}"${near ? ` (did you mean "${near}"?)` : ''}; keys of \`vsky ${cmd.name()}\`: ${[...byKey.keys()].join(', ')}`);
    }
    const attr = option.attributeName();
    if (cmd.getOptionValueSource(attr) === 'cli') continue;
    const args = toConfigArgs(key, option, raw);
    if (args.kind === 'flag') {
      planned.push({ attr, value: args.on ? !option.negate : option.negate });
      continue;
    }
    let value: unknown;
    for (const arg of args.values) {
      try {
        value = option.parseArg ? option.parseArg(arg, value) : arg;
      } catch (err) {
        throw new Error(`key "${key}": "${arg}": ${errorMessage(err)}`);
      }
    }
    if (value !== null && typeof value === 'object') fromFile.add(value);
    planned.push({ attr, value });
  }
  return planned;
}

/**
 * Gives a daemon command `--config FILE`. Call after its options are
 * defined: it wraps their parsers so that a repeatable option given on the
 * command line replaces the file's list instead of adding to it.
 */
export function withConfigFile(cmd: Command): Command {
  for (const option of cmd.options as Option[]) {
    const parse = option.parseArg;
    if (parse) option.argParser((value: string, previous: unknown) => parse(value, isFromFile(previous) ? undefined : previous));
  }
  cmd.addOption(new Option('--config <file>', 'read options from this TOML file (keys are the long options without "--", e.g. '
    + 'data-dir = "/var/lib/vsky"; deploy/config/ has a commented example); options on the command line override it'));
  cmd.on('option:config', (file: string) => {
    try {
      applyConfig(cmd, readConfigFile(file));
    } catch (err) {
      cmd.error(`error: ${file}: ${errorMessage(err)}`, { code: 'vsky.config', exitCode: 2 });
    }
  });
  return cmd;
}

function isFromFile(value: unknown): boolean {
  return value !== null && typeof value === 'object' && fromFile.has(value);
}
