// The I/O buffers the head's frontends share (NBD READ destinations and WRITE
// payloads, SCSI READ Data-In): a bounded pool of the common block sizes, so
// the steady data path allocates no fresh ArrayBuffer per request (each one
// lives across ticks and drove V8 into frequent mark-compacts). A buffer is
// given back only once nothing uses it any more: the engine has settled the
// call, and the socket has written it (the write's callback).

import { BufferPool, COMMON_IO_SIZES } from '../../shared/buffer-pool.js';

export const ioBuffers = new BufferPool(COMMON_IO_SIZES);
