import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ClientHandshake, ServerHandshake, type ServerStep } from '../../shared/data-protocol/auth/handshake.js';
import {
  AUTH_MAGIC, HELLO_SIZE, PROOF_SIZE, VERDICT_SIZE, Verdict, decodeHello, decodeProof, decodeVerdict, encodeHello, encodeProof, encodeVerdict,
} from '../../shared/data-protocol/auth/messages.js';
import { transcriptMac } from '../../shared/data-protocol/auth/transcript.js';
import { loadDataSecurity } from '../../shared/data-protocol/auth/data-security.js';
import { createKeyFile, parseKey, readKeyFile } from '../../shared/security/key-file.js';
import { AuthenticationError } from '../../shared/errors.js';
import { seededRandom } from '../../shared/seeded-random.js';

// The data protocol's authentication handshake (shared/data-protocol/auth):
// codec, both state machines, key files.

const KEY = randomBytes(32);
const NONE = Buffer.alloc(0);

/** Runs a whole handshake between the two machines, bytes fed in the given piece sizes. */
function run(serverKey: Buffer, clientKey: Buffer, opts: { piece?: number; serverBinding?: Buffer; clientBinding?: Buffer } = {}) {
  const server = new ServerHandshake(serverKey, opts.serverBinding ?? NONE);
  const client = new ClientHandshake(clientKey, opts.clientBinding ?? NONE);
  const feed = <T>(push: (b: Buffer) => T, bytes: Buffer): T[] => {
    const piece = opts.piece ?? bytes.length;
    const out: T[] = [];
    for (let at = 0; at < bytes.length; at += piece) out.push(push(bytes.subarray(at, at + piece)));
    return out;
  };
  const toClient = feed((b) => client.push(b), server.hello);
  const sent = toClient.at(-1)!;
  if (sent.kind !== 'send') throw new Error(`client did not answer the hello: ${sent.kind}`);
  expect(toClient.slice(0, -1).every((s) => s.kind === 'more')).toBe(true);
  const verdicts = feed((b) => server.push(b), sent.send);
  const verdict = verdicts.at(-1)! as ServerStep;
  return { server, client, verdict };
}

describe('data auth codec', () => {
  it('round-trips the three messages at their fixed sizes', () => {
    const n1 = randomBytes(32);
    const n2 = randomBytes(32);
    const mac = randomBytes(32);
    expect(encodeHello(n1)).toHaveLength(HELLO_SIZE);
    expect(decodeHello(encodeHello(n1)).serverNonce.equals(n1)).toBe(true);
    const p = decodeProof(encodeProof(n2, mac));
    expect([p.clientNonce.equals(n2), p.mac.equals(mac), encodeProof(n2, mac).length]).toEqual([true, true, PROOF_SIZE]);
    const v = decodeVerdict(encodeVerdict(Verdict.ACCEPTED, mac));
    expect([v.verdict, v.mac.equals(mac), encodeVerdict(Verdict.REFUSED, undefined).length]).toEqual([Verdict.ACCEPTED, true, VERDICT_SIZE]);
  });

  it('refuses wrong sizes, magic, version and verdict with typed errors', () => {
    const hello = encodeHello(randomBytes(32));
    expect(() => decodeHello(hello.subarray(0, HELLO_SIZE - 1))).toThrow(AuthenticationError);
    const badMagic = Buffer.from(hello);
    badMagic[0] = 0x41;
    expect(() => decodeHello(badMagic)).toThrow(/no "VSKYAUTH" magic/);
    const badVersion = Buffer.from(hello);
    badVersion[AUTH_MAGIC.length] = 9;
    expect(() => decodeHello(badVersion)).toThrow(/version 9/);
    const badVerdict = encodeVerdict(Verdict.ACCEPTED, randomBytes(32));
    badVerdict[AUTH_MAGIC.length] = 7;
    expect(() => decodeVerdict(badVerdict)).toThrow(/unknown verdict 7/);
  });

  it('MACs depend on key, direction, both nonces and the channel binding', () => {
    const a = randomBytes(32);
    const b = randomBytes(32);
    const base = transcriptMac(KEY, 'client', a, b, NONE);
    expect(transcriptMac(KEY, 'client', a, b, NONE).equals(base)).toBe(true);
    for (const other of [
      transcriptMac(randomBytes(32), 'client', a, b, NONE), transcriptMac(KEY, 'server', a, b, NONE),
      transcriptMac(KEY, 'client', b, a, NONE), transcriptMac(KEY, 'client', a, b, Buffer.from('tls')),
    ]) expect(other.equals(base)).toBe(false);
    expect(() => transcriptMac(Buffer.alloc(16), 'client', a, b, NONE)).toThrow(/32 bytes/);
  });
});

describe('data auth handshake', () => {
  it('accepts the same key whole and byte by byte, handing back bytes after the proof', () => {
    for (const piece of [undefined, 1, 7]) {
      const { client, verdict } = run(KEY, Buffer.from(KEY), { piece });
      expect(verdict.kind).toBe('accepted');
      if (verdict.kind !== 'accepted') return;
      expect(client.push(verdict.send)).toEqual({ kind: 'accepted', rest: Buffer.alloc(0) });
    }
    // A client pipelining a request right behind its proof: the server returns those bytes untouched.
    const server = new ServerHandshake(KEY, NONE);
    const client = new ClientHandshake(KEY, NONE);
    const step = client.push(server.hello);
    if (step.kind !== 'send') throw new Error('no proof');
    const r = server.push(Buffer.concat([step.send, Buffer.from('frame')]));
    expect(r.kind === 'accepted' && r.rest.toString()).toBe('frame');
  });

  it('the server refuses a wrong key with a REFUSED verdict; the client says why', () => {
    const { client, verdict } = run(KEY, randomBytes(32));
    expect(verdict.kind).toBe('refused');
    if (verdict.kind !== 'refused') return;
    expect(verdict.error.message).toMatch(/another data key/);
    expect(() => client.push(verdict.send!)).toThrow(/refused this data key/);
  });

  it('a client refuses a server without the key (forged verdict MAC)', () => {
    const server = new ServerHandshake(KEY, NONE);
    const client = new ClientHandshake(KEY, NONE);
    client.push(server.hello);
    expect(() => client.push(encodeVerdict(Verdict.ACCEPTED, randomBytes(32)))).toThrow(/does not hold this cluster's data key/);
  });

  it('a recorded proof does not open another connection (fresh server nonce)', () => {
    const first = new ServerHandshake(KEY, NONE);
    const client = new ClientHandshake(KEY, NONE);
    const step = client.push(first.hello);
    if (step.kind !== 'send') throw new Error('no proof');
    expect(first.push(step.send).kind).toBe('accepted');
    const replayed = new ServerHandshake(KEY, NONE).push(step.send);
    expect(replayed.kind).toBe('refused');
  });

  it('a proof bound to another TLS session is refused', () => {
    expect(run(KEY, KEY, { serverBinding: randomBytes(32), clientBinding: randomBytes(32) }).verdict.kind).toBe('refused');
  });

  it('a plaintext data client (a request frame) is refused at the first bytes', () => {
    const server = new ServerHandshake(KEY, NONE);
    const r = server.push(Buffer.from([0, 2, 0, 0, 0, 0, 0, 1]));
    expect(r.kind).toBe('refused');
    expect(r.kind === 'refused' && r.error.message).toMatch(/--data-key/);
    expect(() => server.push(Buffer.alloc(4))).toThrow(/already finished/);
  });

  it('fuzz: random and truncated input never throws out of the server, never accepts', () => {
    const next = seededRandom(14);
    const rnd = { next };
    const good = (() => {
      const s = new ServerHandshake(KEY, NONE);
      const step = new ClientHandshake(KEY, NONE).push(s.hello);
      return step.kind === 'send' ? step.send : Buffer.alloc(0);
    })();
    for (let i = 0; i < 2000; i++) {
      const server = new ServerHandshake(KEY, NONE);
      const len = Math.floor(rnd.next() * 120);
      let bytes: Buffer = Buffer.from(Array.from({ length: len }, () => Math.floor(rnd.next() * 256)));
      if (i % 3 === 0) bytes = Buffer.concat([AUTH_MAGIC, Buffer.from([1, 0, 0, 0]), bytes]); // past the magic check
      if (i % 5 === 0) bytes = good.subarray(0, Math.floor(rnd.next() * good.length)); // truncated (or a stale proof)
      let step: ServerStep = { kind: 'more' };
      for (let at = 0; at < bytes.length && step.kind === 'more'; at += 1 + Math.floor(rnd.next() * 16)) {
        step = server.push(bytes.subarray(at, at + 1 + Math.floor(rnd.next() * 16)));
      }
      expect(step.kind).not.toBe('accepted');
    }
  });
});

describe('key files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-keys-'));

  it('creates 0600 keys, reads raw and hex, refuses others-readable and wrong sizes', () => {
    const path = join(dir, 'data.key');
    createKeyFile(path);
    expect(readKeyFile(path, '--data-key')).toHaveLength(32);
    expect(() => createKeyFile(path)).toThrow(/EEXIST/); // never overwrites a cluster's key
    chmodSync(path, 0o644);
    expect(() => readKeyFile(path, '--data-key')).toThrow(/mode 0644 lets others read the key: run `chmod 600/);
    const hex = join(dir, 'hex.key');
    writeFileSync(hex, `${KEY.toString('hex')}\n`, { mode: 0o600 });
    expect(readKeyFile(hex, '--data-key').equals(KEY)).toBe(true);
    expect(() => parseKey(Buffer.alloc(16), 'k')).toThrow(/32 random bytes/);
    expect(() => readKeyFile(join(dir, 'missing'), '--data-key')).toThrow(/cannot read the key file/);
    rmSync(dir, { recursive: true, force: true });
  });

  it('daemons need a key or an explicit --no-data-auth; TLS needs its three files', () => {
    expect(() => loadDataSecurity({ dataAuth: true })).toThrow(/--data-key FILE.*--no-data-auth/s);
    expect(loadDataSecurity({ dataAuth: false })).toEqual({});
    expect(() => loadDataSecurity({ dataAuth: false, dataKey: '/x' })).toThrow(/contradict/);
    expect(() => loadDataSecurity({ dataAuth: false, dataTls: true, dataTlsCert: '/c' })).toThrow(/missing: --data-tls-key, --data-tls-ca/);
    expect(() => loadDataSecurity({ dataAuth: false, dataTlsCa: '/c' })).toThrow(/add --data-tls/);
  });
});
