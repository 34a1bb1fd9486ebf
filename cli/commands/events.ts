import { InvalidArgumentError as CommanderInvalid, type Command } from 'commander';
import { VskyError, errorMessage } from '../../shared/errors.js';
import type { ManagerClient } from '../../shared/grpc.js';
import type { Event__Output } from '../../proto/generated/vsky/manager/Event.js';
import { adminCommand, call, withManager } from '../admin.js';
import { intArg, positiveIntArg } from '../options.js';
import { emit, printTable } from '../output.js';

// The manager's event log (docs/events.md): every state change with its
// time, target and reason. A table or a JSON array; --follow polls for new
// ones (JSON: one object per line) until Ctrl-C.

const MAX_LIMIT = 10_000;

interface EventsOptions {
  manager: string;
  json?: boolean;
  follow?: boolean;
  limit: number;
  target?: string;
  kind?: string;
  after?: number;
  interval: number;
}

function limitArg(value: string): number {
  const n = positiveIntArg(value);
  if (n > MAX_LIMIT) throw new CommanderInvalid(`at most ${MAX_LIMIT} events per request; page with --after SEQ for more`);
  return n;
}

function targetArg(value: string): string {
  if (value !== 'cluster' && !value.includes(':') && !value.endsWith('*')) {
    throw new CommanderInvalid(`"${value}" is not a target: use volume:NAME, disk:ID, server:NAME, head:NAME or cluster (a prefix ending in *, e.g. volume:*)`);
  }
  return value;
}

/** Details as compact text: key=value, values with spaces quoted. */
function compact(details: Record<string, string>): string {
  return Object.entries(details).map(([k, v]) => `${k}=${/[\s"]/.test(v) || v === '' ? JSON.stringify(v) : v}`).join(' ');
}

function row(e: Event__Output): Record<string, unknown> {
  return { seq: e.seq, time: new Date(e.timeMs).toISOString(), kind: e.kind, target: e.target, reason: e.reason, details: compact(e.details) };
}

const COLUMNS = { seq: 'SEQ', time: 'TIME', kind: 'KIND', target: 'TARGET', reason: 'REASON', details: 'DETAILS' };

/** One line per event while following (a table cannot be re-aligned as rows arrive). */
function printLine(e: Event__Output): void {
  const r = row(e);
  process.stdout.write(`${String(r.seq).padEnd(7)} ${String(r.time)}  ${e.kind.padEnd(22)} ${e.target.padEnd(20)} ${e.reason}${e.details && Object.keys(e.details).length ? `  [${String(r.details)}]` : ''}\n`);
}

function fetch(m: ManagerClient, o: EventsOptions, afterSeq: number) {
  return call(m, 'ListEvents', { afterSeq, limit: o.limit, target: o.target ?? '', kind: o.kind ?? '' });
}

/** Where the next poll starts: after what was seen, or after the newest event when nothing more matched. */
function nextAfter(after: number, events: Event__Output[], latestSeq: number, limit: number): number {
  const last = events.at(-1)?.seq ?? after;
  return events.length < limit ? Math.max(after, last, latestSeq) : last;
}

async function follow(m: ManagerClient, o: EventsOptions): Promise<void> {
  let stopped = false;
  let wake: (() => void) | undefined;
  const stop = () => { stopped = true; wake?.(); };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const sleep = (ms: number) => new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    wake = () => { clearTimeout(t); resolve(); };
  });
  const print = (events: Event__Output[]) => {
    for (const e of events) {
      if (o.json) process.stdout.write(`${JSON.stringify(e)}\n`);
      else printLine(e);
    }
  };
  try {
    // The first answer decides whether we can talk to the manager at all (errors exit).
    const first = await fetch(m, o, o.after ?? 0);
    if (!o.json) process.stdout.write(`${'SEQ'.padEnd(7)} ${'TIME'.padEnd(24)}  ${'KIND'.padEnd(22)} ${'TARGET'.padEnd(20)} REASON  [DETAILS]\n`);
    print(first.events);
    let after = nextAfter(o.after ?? 0, first.events, first.latestSeq, o.limit);
    let full = first.events.length >= o.limit;
    let outage = false;
    while (!stopped) {
      if (!full) await sleep(o.interval);
      if (stopped) break;
      try {
        const r = await fetch(m, o, after);
        if (outage) process.stderr.write('vsky: the manager answers again; following\n');
        outage = false;
        if (r.latestSeq < after && r.events.length === 0) {
          // A manager whose database was replaced numbers from 1 again: start over from its newest events.
          process.stderr.write(`vsky: the manager's newest event is ${r.latestSeq}, before ${after}: was its database replaced? following from its newest\n`);
          after = r.latestSeq;
        }
        print(r.events);
        after = nextAfter(after, r.events, r.latestSeq, o.limit);
        full = r.events.length >= o.limit;
      } catch (err) {
        if (!(err instanceof VskyError) || !['ETRANSPORT', 'ETIMEDOUT'].includes(err.code)) throw err;
        if (!outage) process.stderr.write(`vsky: cannot reach the manager at ${o.manager} (${errorMessage(err)}); retrying every ${o.interval} ms, Ctrl-C to stop\n`);
        outage = true;
        full = false;
      }
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

export function registerEventsCommand(program: Command): void {
  adminCommand(program, 'events', 'the manager\'s event log: every state change with time, target and reason (--follow for new ones)')
    .option('-f, --follow', 'keep polling and print new events as they happen, until Ctrl-C (with --json: one object per line)')
    .option('--limit <n>', `how many (the newest; with --after, the next ones after SEQ; at most ${MAX_LIMIT})`, limitArg, 50)
    .option('--target <target>', 'only events about this: volume:NAME, disk:ID, server:NAME, head:NAME, cluster; a prefix ending in * (volume:*)', targetArg)
    .option('--kind <kind>', 'only this kind (volume.attached), family (resync: resync.*) or prefix ending in *')
    .option('--after <seq>', 'only events after this sequence number, oldest first (page through the log: give the last SEQ you saw)', intArg)
    .option('--interval <ms>', 'polling period of --follow', positiveIntArg, 500)
    .addHelpText('after', `
Kinds: server.added|up|failed|removed, disk.added|up|failed|removed, head.up|failed|removed,
replica.stale, spare.placed, resync.started|requeued|failed|finished,
drain.started|cancelled|target_placed|target_dropped|converted|finished,
volume.created|create_failed|deleted|attached|attach_failed|standby_attached|detached|standby_detached,
lease.handoff|handoff_failed|takeover|resync_epoch, gc.freed (docs/events.md).

Examples:
  vsky events                                  the 50 newest events
  vsky events --target volume:vm1 --limit 200  what happened to volume vm1
  vsky events --kind resync --follow           rebuilds as they start and end
  vsky events --follow --json | jq .           for scripts: one JSON object per line`)
    .action((o: EventsOptions) => withManager(o, async (m) => {
      if (o.follow) return follow(m, o);
      const { events } = await fetch(m, o, o.after ?? 0);
      emit(o, events, () => printTable(events.map(row), COLUMNS));
    }));
}
