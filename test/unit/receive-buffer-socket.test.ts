import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { switchToReceiveBuffer } from '../../shared/net/receive-buffer-socket.js';

// switchToReceiveBuffer moves a connection that was read with 'data' events
// (a negotiation phase) onto a reused receive buffer. Bytes the old socket
// had buffered must come out first, in order, and none may be lost.

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

async function pair(): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const server = net.createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const acceptedP = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  const [accepted] = await acceptedP;
  cleanups.push(() => { client.destroy(); accepted.destroy(); server.close(); });
  return { client, accepted };
}

function until(cond: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) resolve();
      else if (Date.now() > deadline) reject(new Error('condition not met in time'));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

describe('switchToReceiveBuffer', () => {
  it('hands over buffered bytes first, then reads into the given buffer, in order, both ways', async () => {
    const { client, accepted } = await pair();
    const seenBefore: Buffer[] = [];
    const onData = (c: Buffer): void => { seenBefore.push(c); };
    accepted.on('data', onData);
    client.write('negotiate;');
    await until(() => Buffer.concat(seenBefore).toString() === 'negotiate;');
    // The negotiation ends with the socket paused: what comes now stays in its stream buffer.
    accepted.off('data', onData);
    accepted.pause();
    client.write('early;');
    await new Promise((r) => setTimeout(r, 100));
    const receive = Buffer.alloc(64);
    const after: Buffer[] = [];
    const switched = switchToReceiveBuffer(accepted, receive, (n, buf) => {
      after.push(Buffer.from(buf.subarray(0, n))); // copied: the buffer is reused
      return true;
    }, true);
    expect(switched).toBeDefined();
    expect(switched!.socket).not.toBe(accepted);
    expect(switched!.pending?.toString()).toBe('early;'); // the premise: bytes were waiting in the old stream
    const big = Buffer.alloc(10_000, 'x'); // many reads through the 64-byte buffer
    client.write(big);
    client.end('last');
    const ended = once(switched!.socket, 'end');
    await until(() => Buffer.concat(after).length === big.length + 4);
    await ended; // the client's FIN is seen on the moved socket
    const all = Buffer.concat([switched!.pending ?? Buffer.alloc(0), ...after]).toString();
    expect(all).toBe(`early;${big.toString()}last`);
    expect(after.every((b) => b.length <= receive.length)).toBe(true);
    // Writing back still works (half-open: the client ended, we have not).
    const back: Buffer[] = [];
    client.on('data', (c: Buffer) => back.push(c));
    switched!.socket.end('reply');
    await until(() => Buffer.concat(back).toString() === 'reply');
  });

  it('leaves a socket with writes still queued untouched', async () => {
    const { accepted } = await pair();
    accepted.cork();
    accepted.write('queued');
    const switched = switchToReceiveBuffer(accepted, Buffer.alloc(64), () => true, true);
    expect(switched).toBeUndefined();
    expect(accepted.destroyed).toBe(false);
    accepted.uncork();
  });
});
