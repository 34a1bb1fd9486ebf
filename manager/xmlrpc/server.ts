import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { DEFAULT_XMLRPC_ADDRESS, DEFAULT_XMLRPC_PORT } from '../../shared/constants.js';
import { InvalidArgumentError, errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { parseHostPort } from '../../shared/units.js';
import { faultBody } from './dispatch.js';
import { errnoFault } from './faults.js';

// The XML-RPC transport: plain HTTP by default, as VastSky's
// SimpleXMLRPCServer (a trusted management network), or HTTPS; optionally an
// access token checked as HTTP basic auth (any user name, the token as the
// password: http://vsky:TOKEN@host:8881 in Python's xmlrpc.client).
//
// Requests go to / or /RPC2 (other paths: 404), by POST (else 501, as
// Python answers). A body is at most maxBodyBytes (1 MiB): a larger declared
// Content-Length is answered 413 once the rest was read and dropped (never
// buffered), so a client that sends all before it reads sees it; a body must arrive
// within bodyTimeoutMs and a call must finish within callTimeoutMs (else Fault
// 110 ETIMEDOUT; the operation itself goes on in the manager).

const log = moduleLogger('manager.xmlrpc');

export { DEFAULT_XMLRPC_ADDRESS, DEFAULT_XMLRPC_PORT };

export interface XmlRpcServerOptions {
  /** HOST:PORT (port 0 picks one). */
  listen: string;
  /** PEM files: both given = HTTPS. */
  tlsCert?: string;
  tlsKey?: string;
  /** Access token: required as the basic-auth password when set. */
  token?: string;
  maxBodyBytes?: number;
  bodyTimeoutMs?: number;
  callTimeoutMs?: number;
}

export interface XmlRpcServerHandle {
  /** http(s)://HOST:PORT/RPC2 */
  url: string;
  address: string;
  close(): Promise<void>;
}

/** Handles one request body (dispatch.ts handleBody). */
export type BodyHandler = (body: string) => Promise<string>;

const PATHS = new Set(['/', '/RPC2']);
/** Bytes of an oversized body read and dropped so the client sees the 413; past this the connection is cut. */
const DRAIN_LIMIT = 256 * 1024 * 1024;

export async function startXmlRpcServer(opts: XmlRpcServerOptions, handle: BodyHandler): Promise<XmlRpcServerHandle> {
  const { host, port } = parseHostPort(opts.listen, 'XML-RPC listen address');
  if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) throw new InvalidArgumentError('HTTPS needs both --xmlrpc-tls-cert and --xmlrpc-tls-key');
  const limits = {
    maxBody: opts.maxBodyBytes ?? 1024 * 1024, bodyMs: opts.bodyTimeoutMs ?? 10_000, callMs: opts.callTimeoutMs ?? 120_000,
  };
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    serve(req, res, opts.token, limits, handle).catch((err: unknown) => {
      log.error({ err: errorMessage(err) }, 'xml-rpc request failed');
      if (!res.headersSent) reply(res, 500, 'internal error\n');
      else res.destroy();
    });
  };
  const server = opts.tlsCert
    ? https.createServer({ cert: readFileSync(opts.tlsCert), key: readFileSync(opts.tlsKey!) }, onRequest)
    : http.createServer(onRequest);
  server.requestTimeout = limits.bodyMs + limits.callMs;
  server.headersTimeout = Math.min(limits.bodyMs, 60_000);
  server.keepAliveTimeout = 5_000;
  server.on('clientError', (_err, socket: Socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => { server.off('error', reject); resolve(); });
  });
  const bound = (server.address() as AddressInfo).port;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const url = `${opts.tlsCert ? 'https' : 'http'}://${hostPart}:${bound}/RPC2`;
  log.info({ url, tls: Boolean(opts.tlsCert), token: Boolean(opts.token) }, 'XML-RPC (VastSky 3.0 API) listening');
  return {
    url,
    address: `${hostPart}:${bound}`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

interface Limits { maxBody: number; bodyMs: number; callMs: number }

function reply(res: http.ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': String(Buffer.byteLength(text)), ...headers });
  res.end(text);
}

function authorized(req: http.IncomingMessage, token: string): boolean {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/.exec(req.headers.authorization ?? '');
  if (!m) return false;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const given = Buffer.from(decoded.slice(decoded.indexOf(':') + 1));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

async function serve(req: http.IncomingMessage, res: http.ServerResponse, token: string | undefined, limits: Limits, handle: BodyHandler): Promise<void> {
  const path = (req.url ?? '').split('?')[0]!;
  if (!PATHS.has(path)) return refuse(req, res, 404, `no XML-RPC service at ${path.slice(0, 100)}: use / or /RPC2\n`);
  if (req.method !== 'POST') return refuse(req, res, 501, `Unsupported method ('${String(req.method).slice(0, 20)}'): XML-RPC is POST\n`);
  if (token !== undefined && !authorized(req, token)) {
    return refuse(req, res, 401, 'an access token is required (HTTP basic auth, the token as the password)\n', { 'WWW-Authenticate': 'Basic realm="vsky"' });
  }
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > limits.maxBody) return refuse(req, res, 413, `request body over ${limits.maxBody} bytes\n`);
  const body = await readBody(req, limits);
  if (body === 'too large') return refuse(req, res, 413, `request body over ${limits.maxBody} bytes\n`);
  if (body === 'timeout') return refuse(req, res, 408, `request body not received within ${limits.bodyMs} ms\n`);
  if (body === 'aborted') return;
  const out = await withTimeout(handle(body.toString('utf8')), limits.callMs);
  res.writeHead(200, { 'Content-Type': 'text/xml', 'Content-Length': String(Buffer.byteLength(out)) });
  res.end(out);
}

/**
 * Answers with an HTTP error and closes the connection. What is left of the
 * body is read and dropped first (never buffered; at most DRAIN_LIMIT bytes
 * within 10 s, else the connection is cut): a client such as Python's
 * http.client sends the whole body before it reads the answer.
 */
function refuse(req: http.IncomingMessage, res: http.ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  const answer = () => reply(res, status, text, { Connection: 'close', ...headers });
  if (req.complete) return answer();
  let dropped = 0;
  const cut = setTimeout(() => req.destroy(), 10_000);
  cut.unref();
  req.removeAllListeners('data');
  req.on('data', (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > DRAIN_LIMIT) req.destroy();
  });
  req.on('end', () => { clearTimeout(cut); answer(); });
  req.on('close', () => clearTimeout(cut));
  req.on('error', () => undefined);
  req.resume();
}

/** The whole body, or why not; never holds more than maxBody bytes. */
function readBody(req: http.IncomingMessage, limits: Limits): Promise<Buffer | 'too large' | 'timeout' | 'aborted'> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (v: Buffer | 'too large' | 'timeout' | 'aborted') => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.off('data', onData);
      resolve(v);
    };
    const timer = setTimeout(() => finish('timeout'), limits.bodyMs);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limits.maxBody) finish('too large');
      else chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => finish(Buffer.concat(chunks)));
    req.on('error', () => finish('aborted'));
    req.on('close', () => finish(req.complete ? Buffer.concat(chunks) : 'aborted'));
  });
}

function withTimeout(work: Promise<string>, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(faultBody(errnoFault('ETIMEDOUT', `the call did not finish within ${ms} ms; it goes on in the manager`))), ms);
    work.then((v) => { clearTimeout(timer); resolve(v); }, () => { clearTimeout(timer); resolve(faultBody(errnoFault('EIO', 'the call failed'))); });
  });
}
