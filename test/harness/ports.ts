import { createServer } from 'node:net';

// Ports handed out by this test process. The kernel may give the same free port
// to two bind(0) calls in a row once the first socket is closed, so two daemons of
// one cluster could be told to listen on the same port (one then exits with
// EADDRINUSE). Never hand out a port twice.
const handedOut = new Set<number>();

function bindZero(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A TCP port that was free on `host` a moment ago (bind port 0, read it, close), never the same twice. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await bindZero(host);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`freePort: no new free port on ${host} after 100 attempts`);
}
