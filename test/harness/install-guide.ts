import { readFileSync } from 'node:fs';

// docs/install.md as a script: the configuration blocks it marks
// `<!-- rehearsal:DAEMON -->`, its firewall table, and the mapping of its
// example hosts onto loopback addresses, so that the rehearsal test starts the
// daemons from the files the guide tells an operator to write. Pure text work.

export const GUIDE = 'docs/install.md';

export type GuideDaemon = 'manager' | 'storage-node' | 'head-agent';

/** The guide's `<!-- rehearsal:NAME -->` TOML blocks, by name. */
export function rehearsalBlocks(markdown: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of markdown.matchAll(/<!-- rehearsal:([\w-]+) -->\s*```toml\n([\s\S]*?)```/g)) out.set(m[1]!, m[2]!);
  return out;
}

export function readGuide(): string {
  return readFileSync(GUIDE, 'utf8');
}

/**
 * Sets a top-level key of a TOML text: drops its current (uncommented) value,
 * an array over several lines included, and appends `key = value`. Works for
 * files of top-level keys only (no [table] sections), as the guide's are.
 */
export function setKey(toml: string, key: string, value: string): string {
  const lines = toml.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (!new RegExp(`^${key.replace(/[-]/g, '\\-')}\\s*=`).test(line)) { out.push(line); continue; }
    if (/=\s*\[\s*$/.test(line)) while (i + 1 < lines.length && !/^\s*\]/.test(lines[i]!)) i++;
  }
  while (out.length > 0 && out[out.length - 1] === '') out.pop();
  return `${out.join('\n')}\n${key} = ${value}\n`;
}

/** Replaces every occurrence of each key of `map` (addresses, path prefixes) by its value. */
export function mapText(text: string, map: Record<string, string>): string {
  let out = text;
  for (const [from, to] of Object.entries(map)) out = out.split(from).join(to);
  return out;
}

export interface FirewallRow { daemon: string; port: number; key: string }

/** The rows of the guide's firewall table: daemon, port, configuration key. */
export function firewallTable(markdown: string): FirewallRow[] {
  const section = markdown.split(/^## Firewall$/m)[1]?.split(/^## /m)[0] ?? '';
  const rows: FirewallRow[] = [];
  for (const m of section.matchAll(/^\| (manager|storage node|head agent) \| (\d+)\/tcp[^|]* \| `([\w-]+)` \|/gm)) {
    rows.push({ daemon: m[1]!.replace(' ', '-'), port: Number(m[2]), key: m[3]! });
  }
  return rows;
}

/** The text of the guide's `## TITLE` section (up to the next `## `). */
export function guideSection(markdown: string, title: string): string {
  return markdown.split(new RegExp(`^## ${title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'))[1]?.split(/^## /m)[0] ?? '';
}

/**
 * The commands of a section's ```sh blocks that start with `prefix` (e.g. "vsky ca "),
 * as argument lists: comments dropped, split on blanks (the guide's commands quote nothing).
 */
export function guideCommands(section: string, prefix: string): string[][] {
  const out: string[][] = [];
  for (const block of section.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const raw of block[1]!.split('\n')) {
      const line = raw.replace(/\s+#.*$/, '').trim();
      if (line.startsWith(prefix)) out.push(line.split(/\s+/));
    }
  }
  return out;
}
