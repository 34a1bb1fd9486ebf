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
export function adoptWithReceiveBuffer(accepted: net.Socket, buffer: Buffer, onRead: ReadCallback, noDelay: boolean): net.Socket | undefined {
  const carrier = accepted as unknown as HandleCarrier;
  const handle = carrier._handle;
  if (handle === undefined || handle === null || typeof (handle as { useUserBuffer?: unknown }).useUserBuffer !== 'function') return undefined;
  carrier._handle = null;
  accepted.destroy(); // no handle left: only the server's connection count and the object go
  const socket = new net.Socket({ handle, readable: true, writable: true, onread: { buffer, callback: onRead } } as net.SocketConstructorOpts);
  if (noDelay) socket.setNoDelay(true);
  return socket;
}
