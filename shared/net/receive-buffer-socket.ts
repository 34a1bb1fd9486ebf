import net from 'node:net';

// Socket reads into caller-owned memory for ACCEPTED connections. net's
// `onread` option (one reused receive buffer instead of a fresh ArrayBuffer
// per read, which keeps V8's old generation and external-memory accounting
// quiet under load) is only offered to sockets created with `new Socket` /
// `net.connect`, not to the sockets a net.Server hands out. A server created
// with `pauseOnConnect: true` has not read anything yet, so its handle can be
// moved into a new Socket that has `onread`: this file is the one place that
// touches net's private `_handle`. Where that is not possible (a future Node
// without it) callers get undefined and keep the 'data' event path.

type ReadCallback = (nread: number, buf: Uint8Array) => boolean;

interface HandleCarrier { _handle?: unknown }

/**
 * Re-homes a paused, freshly accepted socket's handle into a new Socket that
 * reads into `buffer` and calls `onRead` per read (return false to pause).
 * The old socket is closed without closing the connection. Returns undefined
 * (the old socket untouched) when this Node offers no handle to move.
 */
export function adoptWithReceiveBuffer(
  accepted: net.Socket, buffer: Buffer, onRead: ReadCallback, noDelay: boolean, writableHighWaterMark?: number,
): net.Socket | undefined {
  const carrier = accepted as unknown as HandleCarrier;
  const handle = carrier._handle;
  if (handle === undefined || handle === null || typeof (handle as { useUserBuffer?: unknown }).useUserBuffer !== 'function') return undefined;
  carrier._handle = null;
  accepted.destroy(); // no handle left: only the server's connection count and the object go
  const socket = new net.Socket({
    handle, readable: true, writable: true, onread: { buffer, callback: onRead },
    ...(writableHighWaterMark === undefined ? {} : { writableHighWaterMark }),
  } as net.SocketConstructorOpts);
  if (noDelay) socket.setNoDelay(true);
  return socket;
}

/** A socket moved onto a receive buffer mid-connection, with what its old owner had read but not consumed. */
export interface SwitchedSocket {
  socket: net.Socket;
  /** Bytes the old socket had buffered (read from the kernel, not yet delivered): consume them first. */
  pending: Buffer | undefined;
}

/**
 * As adoptWithReceiveBuffer, for a connection that has already been read
 * with 'data' events (a protocol's negotiation phase): stops the old socket's
 * reads, takes what its stream buffered, and moves the handle. Returns
 * undefined (the socket untouched) when that cannot be done safely: a TLS
 * socket (its handle is the TLS layer), writes still queued in the old
 * socket (they would be lost or reordered), a socket already ending or gone.
 */
export function switchToReceiveBuffer(
  socket: net.Socket, buffer: Buffer, onRead: ReadCallback, noDelay: boolean, writableHighWaterMark?: number,
): SwitchedSocket | undefined {
  const carrier = socket as unknown as HandleCarrier & { encrypted?: boolean };
  const handle = carrier._handle as { useUserBuffer?: unknown; readStop?: () => number; reading?: boolean } | null | undefined;
  if (carrier.encrypted === true || handle === undefined || handle === null) return undefined;
  if (typeof handle.useUserBuffer !== 'function' || typeof handle.readStop !== 'function') return undefined;
  if (socket.destroyed || socket.readableEnded || !socket.writable || socket.writableLength > 0 || socket.connecting) return undefined;
  if (handle.reading === true) {
    if (handle.readStop() !== 0) return undefined;
    handle.reading = false;
  }
  carrier._handle = null;
  // With no handle, read() only hands out what the stream already buffered.
  const chunks: Buffer[] = [];
  for (let c = socket.read() as Buffer | null; c !== null; c = socket.read() as Buffer | null) chunks.push(c);
  socket.removeAllListeners('connect'); // _read without a handle waits for one
  socket.destroy();
  const moved = new net.Socket({
    handle, readable: true, writable: true, allowHalfOpen: socket.allowHalfOpen, onread: { buffer, callback: onRead },
    ...(writableHighWaterMark === undefined ? {} : { writableHighWaterMark }),
  } as net.SocketConstructorOpts);
  if (noDelay) moved.setNoDelay(true);
  return { socket: moved, pending: chunks.length === 0 ? undefined : Buffer.concat(chunks) };
}
