import { randomBytes } from 'node:crypto';
import { AuthenticationError } from '../../errors.js';
import {
  HELLO_SIZE, NONCE_SIZE, PROOF_SIZE, VERDICT_SIZE, Verdict,
  checkMagic, decodeHello, decodeProof, decodeVerdict, encodeHello, encodeProof, encodeVerdict,
} from './messages.js';
import { macMatches, transcriptMac } from './transcript.js';

// Both ends of the handshake as state machines over bytes: the socket code
// feeds whatever arrived and sends what they return. No I/O, no timers (the
// callers bound the time a handshake may take). Bytes that arrive after the
// last handshake message belong to the data protocol and are handed back.

/** Accumulates exactly `size` bytes, checking the magic as soon as it can. */
class MessageBuffer {
  private readonly buf: Buffer;
  private used = 0;

  constructor(private readonly size: number, private readonly what: string) {
    this.buf = Buffer.alloc(size);
  }

  /** Takes bytes; returns the bytes beyond the message, or undefined while it is incomplete. Throws on a bad magic. */
  take(bytes: Buffer): { message: Buffer; rest: Buffer } | undefined {
    const n = Math.min(bytes.length, this.size - this.used);
    bytes.copy(this.buf, this.used, 0, n);
    this.used += n;
    checkMagic(this.buf.subarray(0, this.used), this.what);
    if (this.used < this.size) return undefined;
    return { message: this.buf, rest: bytes.subarray(n) };
  }
}

export type ServerStep =
  | { kind: 'more' }
  | { kind: 'accepted'; send: Buffer; rest: Buffer }
  | { kind: 'refused'; send: Buffer | undefined; error: AuthenticationError };

/** The storage node's side: sends `hello`, checks the client's proof, answers with its own MAC. */
export class ServerHandshake {
  /** To send first, as soon as the connection (TLS included) is up. */
  readonly hello: Buffer;
  private readonly nonce: Buffer;
  private readonly proof = new MessageBuffer(PROOF_SIZE, 'authentication proof');
  private finished = false;

  constructor(private readonly key: Buffer, private readonly binding: Buffer, nonce: Buffer = randomBytes(NONCE_SIZE)) {
    this.nonce = nonce;
    this.hello = encodeHello(nonce);
  }

  push(bytes: Buffer): ServerStep {
    if (this.finished) throw new AuthenticationError('authentication handshake already finished');
    let got: { message: Buffer; rest: Buffer } | undefined;
    try {
      got = this.proof.take(bytes);
      if (got === undefined) return { kind: 'more' };
      const proof = decodeProof(got.message);
      const expected = transcriptMac(this.key, 'client', this.nonce, proof.clientNonce, this.binding);
      this.finished = true;
      if (!macMatches(expected, proof.mac)) {
        return {
          kind: 'refused', send: encodeVerdict(Verdict.REFUSED, undefined),
          error: new AuthenticationError('wrong MAC in the authentication proof: the client holds another data key'),
        };
      }
      const mac = transcriptMac(this.key, 'server', this.nonce, proof.clientNonce, this.binding);
      return { kind: 'accepted', send: encodeVerdict(Verdict.ACCEPTED, mac), rest: got.rest };
    } catch (err) {
      this.finished = true;
      const error = err instanceof AuthenticationError ? err : new AuthenticationError(String(err));
      return { kind: 'refused', send: undefined, error };
    }
  }
}

export type ClientStep =
  | { kind: 'more' }
  | { kind: 'send'; send: Buffer }
  | { kind: 'accepted'; rest: Buffer };

/** The connecting side (head, node copying, manager): answers the hello, checks the server's MAC. Throws AuthenticationError. */
export class ClientHandshake {
  private readonly nonce: Buffer;
  private readonly hello = new MessageBuffer(HELLO_SIZE, 'authentication hello');
  private readonly verdict = new MessageBuffer(VERDICT_SIZE, 'authentication verdict');
  private serverNonce: Buffer | undefined;
  private finished = false;

  constructor(private readonly key: Buffer, private readonly binding: Buffer, nonce: Buffer = randomBytes(NONCE_SIZE)) {
    this.nonce = nonce;
  }

  push(bytes: Buffer): ClientStep {
    if (this.finished) throw new AuthenticationError('authentication handshake already finished');
    if (this.serverNonce === undefined) {
      const got = this.hello.take(bytes);
      if (got === undefined) return { kind: 'more' };
      this.serverNonce = decodeHello(got.message).serverNonce;
      if (got.rest.length > 0) throw new AuthenticationError('the server sent data before the client proved itself');
      const mac = transcriptMac(this.key, 'client', this.serverNonce, this.nonce, this.binding);
      return { kind: 'send', send: encodeProof(this.nonce, mac) };
    }
    const got = this.verdict.take(bytes);
    if (got === undefined) return { kind: 'more' };
    this.finished = true;
    const v = decodeVerdict(got.message);
    if (v.verdict === Verdict.REFUSED) {
      throw new AuthenticationError('the storage node refused this data key: every daemon of the cluster needs the same --data-key file');
    }
    const expected = transcriptMac(this.key, 'server', this.serverNonce, this.nonce, this.binding);
    if (!macMatches(expected, v.mac)) {
      throw new AuthenticationError('wrong MAC in the storage node\'s verdict: it does not hold this cluster\'s data key');
    }
    return { kind: 'accepted', rest: got.rest };
  }
}
