// The fixed-newstyle option haggling of one connection, as a state machine
// with no I/O: it takes the client flags and each decoded option, and answers
// with the replies to send and what happens next (keep haggling, enter
// transmission on an export, or close). handshake-driver.ts drives it over a socket.
//
// TLS (NBD_OPT_STARTTLS, proto.md "TLS support"): mode 'off' is the spec's
// NOTLS (STARTTLS gets ERR_UNSUP), 'on' its SELECTIVETLS with no TLS-only
// export (TLS at the client's choice), 'require' its FORCEDTLS: before TLS
// every option but STARTTLS and ABORT gets ERR_TLS_REQD, and
// NBD_OPT_EXPORT_NAME (which cannot carry an error) ends the session.
// STARTTLS with data, or once TLS is up, gets ERR_INVALID; after the
// upgrade, state negotiated before it (structured replies) is forgotten.

import type { BlockDevice, ExportRegistry } from '../../engine/block-device.js';
import { ProtocolError } from '../../../shared/errors.js';
import { formatSize } from '../../../shared/units.js';
import {
  decodeExportName, decodeInfoRequest, encodeExportNameReply, encodeInfoBlockSize, encodeInfoExport,
  encodeInfoString, encodeOptionError, encodeOptionReply, encodeServerEntry, type OptionHeader,
} from './codec.js';
import {
  EXPORT_TRANSMISSION_FLAGS, KNOWN_CLIENT_FLAGS, MAX_BLOCK_SIZE, MAX_OPTIONS_PER_CONNECTION, MIN_BLOCK_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_DF, NbdInfo, NbdOpt, NbdRep, PREFERRED_BLOCK_SIZE, optionName,
} from './constants.js';
import { decodeMetaContextRequest, encodeMetaContextReply, matchMetaContexts } from './meta-context.js';

/** --nbd-tls: off (NOTLS), on (TLS at the client's option), require (FORCEDTLS). */
export type NbdTlsMode = 'off' | 'on' | 'require';

export type HandshakeStep =
  /** Send the replies and wait for the next option. */
  | { kind: 'continue'; replies: Buffer[] }
  /**
   * Send the replies, then the connection is in transmission on `device`,
   * with structured replies when the client negotiated them. `size` is the
   * export size the replies announce: the connection keeps it (a volume that
   * grows meanwhile is seen at its new size by new connections only; NBD has
   * no way to tell a connected client).
   */
  | { kind: 'transmit'; replies: Buffer[]; device: BlockDevice; exportName: string; structured: boolean; size: number; blockStatus: boolean }
  /**
   * Send the replies, then close. `clean` is a client-initiated soft
   * disconnect (NBD_OPT_ABORT); otherwise a hard disconnect for `reason`.
   */
  | { kind: 'close'; replies: Buffer[]; clean: boolean; reason: string }
  /** Send the replies (the ACK), then run the TLS handshake and go on negotiating inside it (then call tlsStarted()). */
  | { kind: 'starttls'; replies: Buffer[] };

export class Handshake {
  private readonly registry: ExportRegistry;
  private noZeroes = false;
  private structured = false;
  private flagsSeen = false;
  private options = 0;
  private tlsActive = false;
  /** The export base:allocation was selected for (NBD_OPT_SET_META_CONTEXT); undefined: none. */
  private allocationFor: string | undefined;

  constructor(registry: ExportRegistry, private readonly tlsMode: NbdTlsMode = 'off') {
    this.registry = registry;
  }

  /** The TLS handshake after our STARTTLS ACK succeeded: negotiation goes on encrypted, from a clean state. */
  tlsStarted(): void {
    this.tlsActive = true;
    this.structured = false; // spec: no negotiation state survives STARTTLS
    this.allocationFor = undefined;
  }

  /** NBD_OPT_STARTTLS, and FORCEDTLS's gate before TLS; undefined: the option proceeds as usual. */
  private tlsGate(header: OptionHeader): HandshakeStep | undefined {
    const opt = header.option;
    if (opt === NbdOpt.STARTTLS) {
      if (this.tlsMode === 'off') return reply(encodeOptionError(opt, NbdRep.ERR_UNSUP, 'TLS is off on this head agent (--nbd-tls)'));
      if (header.length !== 0) return reply(encodeOptionError(opt, NbdRep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data'));
      if (this.tlsActive) return reply(encodeOptionError(opt, NbdRep.ERR_INVALID, 'TLS is already running on this connection'));
      return { kind: 'starttls', replies: [encodeOptionReply(opt, NbdRep.ACK)] };
    }
    if (this.tlsMode !== 'require' || this.tlsActive || opt === NbdOpt.ABORT) return undefined;
    if (opt === NbdOpt.EXPORT_NAME) return close('NBD_OPT_EXPORT_NAME before TLS: this head requires TLS (--nbd-tls require)');
    return reply(encodeOptionError(opt, NbdRep.ERR_TLS_REQD, 'this head requires TLS: send NBD_OPT_STARTTLS first (nbds:// URIs)'));
  }

  /** The client's u32 flags, right after our greeting. */
  clientFlags(flags: number): HandshakeStep {
    // Spec: the server MUST drop the connection on a client flag it does not know.
    if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      return close(`client sent unknown client flags 0x${flags.toString(16)}`);
    }
    // A client without NBD_FLAG_C_FIXED_NEWSTYLE is still served fixed
    // newstyle replies (the spec allows it; no real client lacks the bit).
    this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
    // Spec: TLS needs fixed newstyle; a client without it can only be served NOTLS.
    if (this.tlsMode === 'require' && (flags & NBD_FLAG_C_FIXED_NEWSTYLE) === 0) {
      return close('client does not speak fixed newstyle, so it cannot start TLS, which this head requires');
    }
    this.flagsSeen = true;
    return { kind: 'continue', replies: [] };
  }

  /** One whole option request. Never throws on bad input: malformed data gets NBD_REP_ERR_INVALID. */
  option(header: OptionHeader, data: Buffer | undefined): HandshakeStep {
    if (!this.flagsSeen) throw new Error('Handshake.option() before clientFlags()');
    if (++this.options > MAX_OPTIONS_PER_CONNECTION) {
      return close(`more than ${MAX_OPTIONS_PER_CONNECTION} options on one connection`);
    }
    const opt = header.option;
    const gated = this.tlsGate(header);
    if (gated !== undefined) return gated;
    try {
      switch (opt) {
        case NbdOpt.EXPORT_NAME: return this.exportName(data);
        case NbdOpt.ABORT: return { kind: 'close', clean: true, reason: 'client aborted negotiation', replies: [encodeOptionReply(opt, NbdRep.ACK)] };
        case NbdOpt.LIST: return this.list(opt, header.length);
        case NbdOpt.INFO:
        case NbdOpt.GO: return this.infoOrGo(opt, data);
        case NbdOpt.STRUCTURED_REPLY:
          if (header.length !== 0) return reply(encodeOptionError(opt, NbdRep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'));
          this.structured = true;
          return reply(encodeOptionReply(opt, NbdRep.ACK));
        case NbdOpt.LIST_META_CONTEXT:
        case NbdOpt.SET_META_CONTEXT: return this.metaContext(opt, data);
        default:
          return reply(encodeOptionError(opt, NbdRep.ERR_UNSUP, `option ${optionName(opt)} is not supported`));
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      if (opt === NbdOpt.EXPORT_NAME) return close(`bad NBD_OPT_EXPORT_NAME: ${err.message}`);
      return reply(encodeOptionError(opt, NbdRep.ERR_INVALID, err.message));
    }
  }

  private exportName(data: Buffer | undefined): HandshakeStep {
    const name = decodeExportName(data);
    const device = this.lookup(name);
    // NBD_OPT_EXPORT_NAME cannot carry an error: the spec says hang up.
    if (device === undefined) return close(`NBD_OPT_EXPORT_NAME: no export named "${name}"`);
    const size = device.size;
    return {
      kind: 'transmit', device, exportName: name, structured: this.structured, size, blockStatus: this.blockStatusFor(name),
      replies: [encodeExportNameReply(size, this.transmissionFlags(device), this.noZeroes)],
    };
  }

  private list(opt: number, length: number): HandshakeStep {
    if (length !== 0) return reply(encodeOptionError(opt, NbdRep.ERR_INVALID, 'NBD_OPT_LIST takes no data'));
    const replies = this.registry.list().map((d) => encodeOptionReply(opt, NbdRep.SERVER, encodeServerEntry(d.name)));
    replies.push(encodeOptionReply(opt, NbdRep.ACK));
    return { kind: 'continue', replies };
  }

  private infoOrGo(opt: number, data: Buffer | undefined): HandshakeStep {
    const req = decodeInfoRequest(opt, data);
    const device = this.lookup(req.name);
    if (device === undefined) {
      const message = req.name === ''
        ? 'this server has no default export; give an export name (NBD_OPT_LIST lists them)'
        : `no export named "${req.name}"`;
      return reply(encodeOptionError(opt, NbdRep.ERR_UNKNOWN, message));
    }
    const info = (payload: Buffer): Buffer => encodeOptionReply(opt, NbdRep.INFO, payload);
    const size = device.size;
    const replies = [info(encodeInfoExport(size, this.transmissionFlags(device)))];
    if (req.requests.includes(NbdInfo.NAME)) replies.push(info(encodeInfoString(NbdInfo.NAME, device.name)));
    if (req.requests.includes(NbdInfo.DESCRIPTION)) {
      replies.push(info(encodeInfoString(NbdInfo.DESCRIPTION, `VastSky volume ${device.name} (${formatSize(size)})`)));
    }
    // Sent even when not asked: our maximum (32 MiB) is tighter than the
    // spec's default, and a client that did not ask may ignore it.
    replies.push(info(encodeInfoBlockSize(MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_BLOCK_SIZE)));
    replies.push(encodeOptionReply(opt, NbdRep.ACK));
    // NBD_OPT_GO enters transmission with no zero padding, NO_ZEROES or not.
    if (opt === NbdOpt.GO) {
      return { kind: 'transmit', replies, device, exportName: device.name, structured: this.structured, size, blockStatus: this.blockStatusFor(req.name) };
    }
    return { kind: 'continue', replies };
  }

  /**
   * NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: we offer base:allocation
   * (meta-context.ts). SET needs structured replies first (spec) and
   * replaces any earlier selection; the selection holds for the export it
   * named only (a GO to another export gets no context).
   */
  private metaContext(opt: number, data: Buffer | undefined): HandshakeStep {
    const set = opt === NbdOpt.SET_META_CONTEXT;
    if (set && !this.structured) {
      return reply(encodeOptionError(opt, NbdRep.ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first'));
    }
    const req = decodeMetaContextRequest(opt, data);
    if (this.lookup(req.exportName) === undefined) {
      return reply(encodeOptionError(opt, NbdRep.ERR_UNKNOWN, `no export named "${req.exportName}"`));
    }
    const contexts = matchMetaContexts(req.queries, !set);
    if (set) this.allocationFor = contexts.length > 0 ? req.exportName : undefined;
    const replies = contexts.map(([id, name]) => encodeMetaContextReply(opt, id, name));
    replies.push(encodeOptionReply(opt, NbdRep.ACK));
    return { kind: 'continue', replies };
  }

  private blockStatusFor(exportName: string): boolean {
    return this.structured && this.allocationFor === exportName;
  }

  /** SEND_DF only with structured replies (spec); our READ data always comes as one chunk. */
  private transmissionFlags(device: BlockDevice): number {
    return EXPORT_TRANSMISSION_FLAGS | (this.structured ? NBD_FLAG_SEND_DF : 0) | (device.readOnly === true ? NBD_FLAG_READ_ONLY : 0);
  }

  private lookup(name: string): BlockDevice | undefined {
    // The empty name is the spec's "default export"; we have none, so that a
    // client that forgot the name never lands on some volume by accident.
    return name === '' ? undefined : this.registry.lookup(name);
  }
}

function reply(buf: Buffer): HandshakeStep {
  return { kind: 'continue', replies: [buf] };
}

function close(reason: string): HandshakeStep {
  return { kind: 'close', clean: false, reason, replies: [] };
}
