// Defaults in one place. Daemons and the CLI take these unless told otherwise.

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Where `vsky cluster up` puts the manager, and where admin commands look by default. */
export const DEFAULT_MANAGER_ADDRESS = '127.0.0.1:7700';
export const DEFAULT_HEAD_GRPC_PORT = 7720;
export const DEFAULT_NBD_PORT = 10809;
export const DEFAULT_ISCSI_PORT = 3260;
export const DEFAULT_NODE_DATA_PORT = 7710;
export const DEFAULT_NODE_GRPC_PORT = 7711;
/** VastSky 3.0's XML-RPC port (its storage manager's 8881); the manager serves it on loopback unless told otherwise. */
export const DEFAULT_XMLRPC_PORT = 8881;
export const DEFAULT_XMLRPC_ADDRESS = `127.0.0.1:${DEFAULT_XMLRPC_PORT}`;
/** Local cluster: storage node i listens on 127.0.0.(NODE_HOST_BASE + i), standing in for separate hosts. */
export const LOCAL_NODE_HOST_BASE = 11;

export const DEFAULT_CHUNK_SIZE = 256 * MiB;
export const DEFAULT_REPLICAS = 3;
export const MAX_REPLICAS = 9;

export const DEFAULT_HEARTBEAT_INTERVAL_MS = 1000;
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 5000;
/**
 * A volume's write lease expires this long after its holder's last heartbeat;
 * only then may another head take the volume over without --force. Heads
 * heartbeat every second, so a holder must miss 8 in a row.
 */
export const DEFAULT_LEASE_TTL_MS = 8000;

/** Largest single data-protocol payload; bigger requests are split by the head. */
export const MAX_DATA_PAYLOAD = 32 * MiB;
/** Requests a head keeps in flight per storage-node connection before queueing. */
export const MAX_INFLIGHT_PER_CONNECTION = 256;
/**
 * Data-protocol liveness bound (head side): a storage node that sends nothing for this
 * long while requests to it are outstanding, and does not answer a PING probe either,
 * is taken as hung and its connection fails (its replicas are then reported stale).
 */
export const DATA_TIMEOUT_MS = 2_000;
/**
 * The longest one data-protocol request may stay unanswered while its node otherwise
 * answers (a FLUSH or FENCE fdatasyncs; a FUA write too, and requests queue behind them
 * on a busy disk). Also the bound for a single request stuck on a node that is alive.
 */
export const FLUSH_TIMEOUT_MS = 30_000;

/** Chunk-table written-region bitmap: bits per chunk (region size = chunk size / bits). */
export const REGION_BITS_PER_CHUNK = 4096;
