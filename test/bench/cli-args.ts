// The benches' command-line options: `--name N` (a number) and flags.

/** The number after `name` on the command line, or `dflt` when absent. */
export function numberArg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}
