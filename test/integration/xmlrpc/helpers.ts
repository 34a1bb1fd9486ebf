import { seededRandom } from '../../../shared/seeded-random.js';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { request } from 'node:http';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

// Raw HTTP and gRPC clients for test/integration/xmlrpc.test.ts: bodies no
// well-behaved XML-RPC library would send, a seeded generator of bad and
// random bodies, and the standard gRPC health and reflection clients.

/** A long-lived `vastsky_client.py serve URL`: Python's xmlrpc.client, one process for many calls. */
export class PythonClient {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiting: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }> = [];
  private stderr = '';

  constructor(script: string, url: string) {
    this.child = spawn('python3', [script, 'serve', url]);
    this.child.stderr.on('data', (d: Buffer) => { this.stderr += d.toString(); });
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const w = this.waiting.shift();
      if (!w) return;
      clearTimeout(w.timer);
      try { w.resolve(JSON.parse(line)); } catch (err) { w.reject(err as Error); }
    });
    this.child.on('exit', (code) => {
      for (const w of this.waiting.splice(0)) { clearTimeout(w.timer); w.reject(new Error(`python exited (${code}): ${this.stderr}`)); }
    });
  }

  /** {ok: value} | {fault: [code, string]} | {http: [status, message]} */
  call(method: string, struct: unknown, timeoutMs = 60_000): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`python call ${method} timed out`)), timeoutMs);
      this.waiting.push({ resolve, reject, timer });
      this.child.stdin.write(`${JSON.stringify({ method, struct })}\n`);
    });
  }

  /** One call with VastSky's `ver` (5); its value, or throws on a fault or HTTP error. */
  async ok(method: string, struct: Record<string, unknown> = {}): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    const r = await this.call(method, { ...struct, ver: 5 });
    if (!('ok' in r)) throw new Error(`${method}: ${JSON.stringify(r)}`);
    return r.ok;
  }

  /** The fault code of a call with `ver` (5), or 0 when it succeeded. */
  async faultCode(method: string, struct: Record<string, unknown> = {}): Promise<number> {
    const r = await this.call(method, { ...struct, ver: 5 });
    return r.fault ? r.fault[0] : 0;
  }

  close(): void {
    this.child.stdin.end();
    this.child.kill();
  }
}

export interface HttpReply { status: number; body: string }

/** POSTs a body (or `size` bytes of zeros, with Content-Length or chunked) and reads the reply; bounded by 30 s. */
export function httpPost(url: string, body: string | { size: number; chunked?: boolean }, opts: { method?: string } = {}): Promise<HttpReply> {
  const u = new URL(url);
  const size = typeof body === 'string' ? Buffer.byteLength(body) : body.size;
  const chunked = typeof body !== 'string' && body.chunked === true;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { req.destroy(); reject(new Error(`no reply from ${url} within 30 s`)); }, 30_000);
    const req = request({
      host: u.hostname, port: u.port, path: u.pathname, method: opts.method ?? 'POST',
      headers: { 'Content-Type': 'text/xml', ...(chunked ? {} : { 'Content-Length': String(size) }) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => { clearTimeout(timer); resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }); });
      res.on('error', () => undefined);
    });
    req.on('error', (err) => { clearTimeout(timer); reject(err); });
    if (typeof body === 'string') {
      req.end(body);
      return;
    }
    const block = Buffer.alloc(1024 * 1024, 0x41);
    let sent = 0;
    const pump = (): void => {
      while (sent < size) {
        const n = Math.min(block.length, size - sent);
        sent += n;
        if (!req.write(block.subarray(0, n))) { req.once('drain', pump); return; }
      }
      req.end();
    };
    pump();
  });
}


const READ_ONLY = ['listLogicalVolumes', 'showLogicalVolume', 'listHeadServers', 'listStorageServers', 'listPhysicalDisks', 'listEvents', 'getAccessRules', 'system.listMethods'];
const MUTATING = ['createLogicalVolume', 'deleteLogicalVolume', 'attachLogicalVolume', 'detachLogicalVolume', 'notifyFailure', 'notifyBadBlocks',
  'registerPhysicalDisk', 'deletePhysicalDisk', 'deleteStorageServer', 'deleteHeadServer', 'setAccessRules', 'handoffLogicalVolume'];
const KEYS = ['ver', 'lvolid', 'lvolname', 'capacity', 'redundancy', 'hsvrid', 'ssvrid', 'pdskid', 'target', 'targetid', 'blocks', 'ip_data', '__proto__', 'constructor', ''];

/**
 * Bodies for the fuzz: random values in calls of read-only methods (any `ver`),
 * calls of mutating methods whose `ver` is never 5 (so they must be refused with
 * EPROTO and change nothing), unknown methods, byte-mutated and truncated calls,
 * deep nesting and plain garbage. The same seed gives the same bodies.
 */
export function* seededFuzzBodies(seed: number, count: number): Generator<string> {
  const rnd = seededRandom(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const text = (n: number) => Array.from({ length: int(n) }, () => pick(['a', 'Z', '0', '-', '&amp;', '&lt;', '&#x41;', '&bogus;', ']]>', '\u00e9', '\u{1F600}', ' ', '<', '\u0001'])).join('');
  const value = (depth: number): string => {
    const kind = depth > 6 ? int(6) : int(10);
    switch (kind) {
      case 0: return `<int>${pick(['0', '1', '-1', '5', '2147483648', '99999999999999999999', '1e3', ' 7 ', '+3', '0x10'])}</int>`;
      case 1: return `<double>${pick(['5.0', 'nan', '-inf', '1e308', 'x', ''])}</double>`;
      case 2: return `<string>${text(20)}</string>`;
      case 3: return `<boolean>${pick(['0', '1', 'true', '2'])}</boolean>`;
      case 4: return `<base64>${pick(['AAAA', '!!', ''])}</base64>`;
      case 5: return pick(['<nil/>', '<dateTime.iso8601>20260101T00:00:00</dateTime.iso8601>', '<i8>5</i8>', '', 'bare text']);
      case 6: case 7: return `<array><data>${Array.from({ length: int(4) }, () => `<value>${value(depth + 1)}</value>`).join('')}</data></array>`;
      default: return struct(depth + 1, undefined);
    }
  };
  const struct = (depth: number, ver: string | undefined): string => {
    const members = Array.from({ length: int(5) }, () => `<member><name>${pick(KEYS.filter((k) => k !== 'ver'))}</name><value>${value(depth)}</value></member>`);
    if (ver !== undefined) members.splice(int(members.length + 1), 0, `<member><name>ver</name><value>${ver}</value></member>`);
    return `<struct>${members.join('')}</struct>`;
  };
  const call = (method: string, ver: string | undefined) =>
    `<?xml version='1.0'?><methodCall><methodName>${method}</methodName><params><param><value>${struct(0, ver)}</value></param></params></methodCall>`;
  const mutate = (body: string): string => {
    const b = Buffer.from(body);
    for (let i = 0, n = 1 + int(8); i < n; i++) b[int(b.length)] = int(256);
    return b.toString('latin1');
  };
  for (let i = 0; i < count; i++) {
    const readOnly = call(pick(READ_ONLY), pick(['<int>5</int>', '<int>5</int>', '<int>3</int>', '<string>5</string>', undefined]));
    switch (i % 8) {
      case 0: yield readOnly; break;
      case 1: yield call(pick(MUTATING), pick(['<int>3</int>', '<string>5</string>', '<double>5.5</double>', '<boolean>1</boolean>', undefined])); break;
      case 2: yield mutate(readOnly); break;
      case 3: yield readOnly.slice(0, int(readOnly.length)); break;
      case 4: yield call(`${pick(['foo', 'system.', '_StorageManager__', 'connect_db', 'x'.repeat(300)])}${text(8)}`, '<int>5</int>'); break;
      case 5: { const d = 1 + int(5000); yield `<methodCall><methodName>listEvents</methodName><params><param>${'<value><array><data>'.repeat(d)}${'</data></array></value>'.repeat(d)}</param></params></methodCall>`; break; }
      case 6: yield Array.from({ length: int(2000) }, () => String.fromCharCode(int(256))).join(''); break;
      default: yield `<!DOCTYPE x [<!ENTITY a "${'A'.repeat(100)}"><!ENTITY b "&a;&a;&a;&a;">]><methodCall><methodName>listEvents</methodName><params><param><value><string>&b;&b;&b;</string></value></param></params></methodCall>`;
    }
  }
}

const require = createRequire(import.meta.url);
const LOADER: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };

/** grpc.health.v1.Health/Check: the serving status of a service ('' is the server). */
export function grpcHealth(address: string, service: string, creds: grpc.ChannelCredentials): Promise<string> {
  const def = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, LOADER)) as any; // eslint-disable-line @typescript-eslint/no-explicit-any
  const client = new def.grpc.health.v1.Health(address, creds);
  return new Promise((resolve, reject) => {
    client.Check({ service }, { deadline: Date.now() + 5000 }, (err: Error | null, res: { status: string }) => {
      client.close();
      if (err) reject(err);
      else resolve(res.status);
    });
  });
}

/** grpc.reflection.v1 ServerReflectionInfo list_services: the names of the services the server has. */
export function grpcReflectionServices(address: string, creds: grpc.ChannelCredentials): Promise<string[]> {
  const file = require.resolve('@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto');
  const def = grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER)) as any; // eslint-disable-line @typescript-eslint/no-explicit-any
  const client = new def.grpc.reflection.v1.ServerReflection(address, creds);
  return new Promise((resolve, reject) => {
    const stream = client.ServerReflectionInfo({ deadline: Date.now() + 5000 });
    stream.on('data', (res: { listServicesResponse?: { service: { name: string }[] } }) => {
      stream.end();
      client.close();
      resolve((res.listServicesResponse?.service ?? []).map((s) => s.name));
    });
    stream.on('error', (err: Error) => { client.close(); reject(err); });
    stream.write({ listServices: '' });
  });
}
