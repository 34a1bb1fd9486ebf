import { pino, type Logger } from 'pino';
import { currentRequestId } from './request-id.js';

export type { Logger };

// One replaceable root logger; each module takes a child with its own `mod`
// name and the ids it works on (volume, connection, disk) so every line can be
// traced. The hot data path logs nothing unless VSKY_TRACE names its module.

/** Every line written while serving a request carries its id (shared/request-id.ts). */
function requestIdMixin(): Record<string, unknown> {
  const reqId = currentRequestId();
  return reqId === undefined ? {} : { reqId };
}

let root: Logger = pino({
  level: process.env.VSKY_LOG_LEVEL ?? 'info',
  mixin: requestIdMixin,
  base: { pid: process.pid },
  timestamp: pino.stdTimeFunctions.isoTime,
});

const traced = new Set((process.env.VSKY_TRACE ?? '').split(',').filter(Boolean));

export function setRootLogger(logger: Logger): void {
  root = logger;
}

export function rootLogger(): Logger {
  return root;
}

/** A child logger for module `mod` with extra bound fields. */
export function moduleLogger(mod: string, bindings: Record<string, unknown> = {}): Logger {
  return root.child({ mod, ...bindings });
}

/** True when VSKY_TRACE lists `mod` (or `all`): enables per-request debug lines. */
export function isTraced(mod: string): boolean {
  return traced.has(mod) || traced.has('all');
}

/** A logger for daemons: `name` is the component (manager, storage-node, head-agent). */
export function initDaemonLogger(name: string, level?: string): Logger {
  root = pino({
    level: level ?? process.env.VSKY_LOG_LEVEL ?? 'info',
    base: { pid: process.pid, component: name },
    mixin: requestIdMixin,
    timestamp: pino.stdTimeFunctions.isoTime,
  });
  return root;
}
