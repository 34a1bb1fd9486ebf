// The iSCSI target of a head agent: a TCP listener whose connections log in
// to the targets of an IscsiTargetRegistry (or to a discovery session) and
// then carry SCSI commands to their logical units. Error recovery level 0,
// one connection per session. Bad input closes that connection only, with a
// log line naming the remote address and the reason; nothing an initiator
// sends can take the server down. Connections, logins in progress and
// sessions are bounded.

import { VskyError } from '../../../shared/errors.js';
import { moduleLogger } from '../../../shared/logger.js';
import { TcpServer } from '../tcp-server.js';
import { IscsiConnection, type ConnectionTuning } from './connection.js';
import {
  CLOSE_GRACE_MS, CMDSN_WINDOW, LOGIN_TIMEOUT_MS, MAX_CONNECTIONS, MAX_DATA_BYTES_IN_FLIGHT, MAX_LOGINS_IN_PROGRESS,
  NOP_INTERVAL_MS, NOP_TIMEOUT_MS,
} from './constants.js';
import { DEFAULT_TARGET_OFFER, type TargetOffer } from './negotiation.js';
import { SessionTable } from './session-table.js';
import type { IscsiTargetRegistry } from './target-registry.js';

export interface IscsiServerOptions {
  host: string;
  port: number;
  registry: IscsiTargetRegistry;
  portalGroupTag?: number;
}

export interface IscsiServerHandle {
  /** HOST:PORT bound (the real port when 0 was asked for). */
  address: string;
  /** Sessions in full feature phase to target `iqn`, or all sessions (discovery included) without it. */
  sessionCount(iqn?: string): number;
  /** Stops accepting, lets in-flight commands finish (bounded), closes every connection. */
  close(): Promise<void>;
}

/** Limits, defaulted from constants.ts; tests shrink them. */
export interface IscsiServerTuning extends ConnectionTuning {
  maxConnections: number;
  maxLoginsInProgress: number;
  offer: TargetOffer;
}

const DEFAULT_TUNING: IscsiServerTuning = {
  loginTimeoutMs: LOGIN_TIMEOUT_MS,
  nopIntervalMs: NOP_INTERVAL_MS,
  nopTimeoutMs: NOP_TIMEOUT_MS,
  closeGraceMs: CLOSE_GRACE_MS,
  cmdWindow: CMDSN_WINDOW,
  maxDataBytes: MAX_DATA_BYTES_IN_FLIGHT,
  maxConnections: MAX_CONNECTIONS,
  maxLoginsInProgress: MAX_LOGINS_IN_PROGRESS,
  offer: DEFAULT_TARGET_OFFER,
};

export async function startIscsiServer(opts: IscsiServerOptions, tuning: Partial<IscsiServerTuning> = {}): Promise<IscsiServerHandle> {
  const limits: IscsiServerTuning = { ...DEFAULT_TUNING, ...tuning };
  const portalGroupTag = opts.portalGroupTag ?? 1;
  if (!Number.isInteger(portalGroupTag) || portalGroupTag < 0 || portalGroupTag > 0xffff) {
    throw new VskyError('EINVAL', `portal group tag ${portalGroupTag} must be an integer in 0..65535`);
  }
  const sessions = new SessionTable();
  const server = await TcpServer.start<IscsiConnection>({
    host: opts.host, port: opts.port, protocol: 'iSCSI', title: 'iSCSI target', work: 'commands', log: moduleLogger('iscsi'),
    maxConnections: limits.maxConnections, closeGraceMs: limits.closeGraceMs, details: { portalGroupTag },
    refuse(connections) {
      let logins = 0;
      for (const c of connections) if (!c.loggedIn) logins++;
      if (logins < limits.maxLoginsInProgress) return undefined;
      return { message: 'too many iSCSI logins in progress; refusing this connection', limit: limits.maxLoginsInProgress };
    },
    accept: (socket, log) => new IscsiConnection(socket, {
      registry: opts.registry, sessions, portalGroupTag, offer: limits.offer, tuning: limits, log,
    }),
  });
  return {
    address: server.address,
    sessionCount(iqn?: string): number {
      return sessions.count(iqn);
    },
    close: () => server.close(),
  };
}
