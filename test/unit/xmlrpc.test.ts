import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { GiB, MiB } from '../../shared/constants.js';
import { AlreadyExistsError, CapacityError, ConflictError, NotFoundError, TransportError } from '../../shared/errors.js';
import { buildChunkMap, type DiskRecord, type ServerRecord, type VolumeRecord } from '../../manager/types.js';
import { XmlRpcDouble, decodeCall, decodeResponse, encodeFault, encodeResponse } from '../../manager/xmlrpc/codec.js';
import { ERRNO, XmlRpcFaultError, mapErrors, toFault } from '../../manager/xmlrpc/faults.js';
import { eventCode, eventStatus } from '../../manager/xmlrpc/methods-events.js';
import { checkLvolname } from '../../manager/xmlrpc/methods-volumes.js';
import { callStruct, idValue, truthy } from '../../manager/xmlrpc/params.js';
import { handleBody } from '../../manager/xmlrpc/dispatch.js';
import type { XmlRpcContext } from '../../manager/xmlrpc/context.js';
import { startXmlRpcServer } from '../../manager/xmlrpc/server.js';
import { MIRROR_STATUS, ctime, hasFault, lvolLabel, mirrorStatus, volumeTree } from '../../manager/xmlrpc/tree.js';
import { httpPost } from '../integration/xmlrpc/helpers.js';

const call = (method: string, value: string) =>
  `<?xml version='1.0'?><methodCall><methodName>${method}</methodName><params><param><value>${value}</value></param></params></methodCall>`;
const faultOf = (fn: () => unknown): number | undefined => {
  try { fn(); return undefined; } catch (err) { return (err as XmlRpcFaultError).faultCode; }
};

describe('XML-RPC codec', () => {
  it('reads ints strictly, keeps doubles apart from ints, and gives structs no prototype', async () => {
    const { method, params } = await decodeCall(call('m', '<struct><member><name>a</name><value><int> 7 </int></value></member>'
      + '<member><name>b</name><value><double>3</double></value></member><member><name>__proto__</name><value><i4>1</i4></value></member>'
      + '<member><name>c</name><value>bare</value></member></struct>'));
    expect(method).toBe('m');
    const s = params[0] as Record<string, unknown>;
    expect(Object.getPrototypeOf(s)).toBe(null);
    expect(s.a).toBe(7);
    expect(s.b).toBeInstanceOf(XmlRpcDouble);
    expect(s.__proto__).toBe(1);
    expect(s.c).toBe('bare');
    await expect(decodeCall(call('m', '<int>12abc</int>'))).rejects.toThrow(/invalid int/);
    await expect(decodeCall(call('m', '<int>99999999999999999999</int>'))).rejects.toThrow(/invalid int/);
    await expect(decodeCall('<methodCall><params/></methodCall>')).rejects.toThrow();
    await expect(decodeCall('garbage')).rejects.toThrow();
  });

  it('writes values and faults that Python reads, with characters XML cannot carry replaced', async () => {
    expect(await decodeResponse(encodeResponse([{ a: 1, b: 'x<y', c: true, d: [] }]))).toEqual([{ a: 1, b: 'x<y', c: true, d: [] }]);
    expect(await decodeResponse(encodeResponse('a<b]]>c'))).toBe('a<b]] >c');
    expect(encodeResponse(0)).toContain('<int>0</int>');
    const f = encodeFault(71, 'EPROTO\u0000');
    await expect(decodeResponse(f)).rejects.toMatchObject({ faultCode: 71, faultString: 'EPROTO\uFFFD' });
  });
});

describe('XML-RPC faults and parameters', () => {
  it('maps typed errors to errno faults', async () => {
    expect(toFault(new NotFoundError('x')).faultCode).toBe(ERRNO.ENOENT);
    expect(toFault(new AlreadyExistsError('x')).faultCode).toBe(ERRNO.EEXIST);
    expect(toFault(new ConflictError('x')).faultCode).toBe(ERRNO.EBUSY);
    expect(toFault(new CapacityError('x')).faultCode).toBe(ERRNO.ENOSPC);
    expect(toFault(new Error('boom'))).toMatchObject({ faultCode: 500, faultString: 'Internal Server Error: boom' });
    expect(toFault(new ConflictError('held')).faultString).toBe('EBUSY: held');
    await expect(mapErrors(() => Promise.reject(new TransportError('down')), { '*': 'ENOSPC' })).rejects.toMatchObject({ faultCode: ERRNO.ENOSPC });
    await expect(mapErrors(() => Promise.reject(new AlreadyExistsError('x')), { EEXIST: 'EEXIST', '*': 'ENOSPC' })).rejects.toMatchObject({ faultCode: ERRNO.EEXIST });
  });

  it('wants one struct with ver 5, as VastSky does (Fault 1, then 71)', () => {
    expect(faultOf(() => callStruct([]))).toBe(1);
    expect(faultOf(() => callStruct([5]))).toBe(1);
    expect(faultOf(() => callStruct([{}]))).toBe(71);
    expect(faultOf(() => callStruct([{ ver: 3 }]))).toBe(71);
    expect(faultOf(() => callStruct([{ ver: '5' }]))).toBe(71);
    expect(faultOf(() => callStruct([{ ver: true }]))).toBe(71);
    expect(faultOf(() => callStruct([{ ver: 5 }, {}]))).toBe(1);
    expect(callStruct([{ ver: new XmlRpcDouble(5) }])).toBeTruthy();
    expect(callStruct([{ ver: 5, lvolid: 3 }])).toEqual({ ver: 5, lvolid: 3 });
  });

  it('reads ids and truth the way Python and SQLite do', () => {
    expect([idValue(7), idValue('214'), idValue(' 9 '), idValue('x'), idValue(true), idValue(new XmlRpcDouble(2))]).toEqual([7, 214, 9, undefined, undefined, 2]);
    expect([truthy(0), truthy(''), truthy([]), truthy(false), truthy('0'), truthy(1), truthy([0])]).toEqual([false, false, false, false, true, true, true]);
  });

  it('checks lvolnames as check_lvolname', () => {
    expect(['vm1', 'a.b-c_d', 'x'.repeat(64), 'lvol-xyz'].map(checkLvolname)).toEqual([true, true, true, true]);
    expect(['', '.', '..', 'a/b', 'x'.repeat(65), 'lvol-0000abcd', 'lvol-ABC', 'é', 5].map(checkLvolname)).toEqual(Array(9).fill(false));
  });

  it('maps event kinds to VastSky EVENT and EVENT_STATUS', () => {
    expect(['disk.failed', 'replica.stale', 'resync.started', 'resync.finished', 'drain.cancelled', 'gc.freed', 'volume.created']
      .map((k) => [eventCode(k), eventStatus(k)])).toEqual([[1, 5], [1, 3], [2, 2], [2, 3], [2, 4], [3, 3], [0, 3]]);
  });
});

describe('showLogicalVolume tree', () => {
  const chunk = 256 * MiB;
  const disks: DiskRecord[] = [1, 2, 3].map((n) => ({
    id: `d${n}`, serverId: `s${n}`, path: `/disk${n}`, chunkSize: chunk, chunkCount: 64, state: 'active', stateReason: '', addedMs: 0,
    intId: n, dextIds: [1000 * n, 64],
  }));
  const servers = [1, 2, 3].map((n) => ({ id: `s${n}`, intId: 10 + n, dataAddress: `127.0.0.${10 + n}:7710` }) as ServerRecord);
  const look = {
    disk: (id: string) => disks.find((d) => d.id === id), server: (id: string) => servers.find((s) => s.id === id),
    dextId: (d: DiskRecord | undefined, i: number) => (d ? d.dextIds![0]! + i : 0),
  };
  const volume: VolumeRecord = {
    id: 4, name: 'vm1', size: 2 * GiB + 512 * MiB, replicas: 3, chunkSize: chunk, segmentCount: 10, generation: 1, epoch: 0,
    attachedHead: '', nbdUri: '', spreadLabel: '', createdMs: Date.UTC(2010, 9, 20, 5, 45, 39), intId: 100,
  };
  const placed = Array.from({ length: 30 }, (_, r) => ({ segment: Math.floor(r / 3), slot: r % 3, diskId: `d${(r % 3) + 1}`, chunkIndex: Math.floor(r / 3) }));

  it('is LVOL > SNAPSHOT-ORIGIN > LINEAR > one MIRROR per segment > one DEXT per replica, ids from the volume\'s block', () => {
    const map = buildChunkMap(4, 3, 10, placed);
    const t = volumeTree(volume, map, look) as any; // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(Object.keys(t).sort()).toEqual(['capacity', 'components', 'labels', 'lvolid', 'lvolspec', 'lvoltype', 'mirror_status']);
    expect(t).toMatchObject({ lvolid: 100, lvoltype: 0, capacity: 2, mirror_status: 0, labels: ['vm1', 'lvol-00000064'] });
    expect(t.lvolspec).toMatchObject({ lvolname: 'vm1', redundancy: 3, ctime: '2010-10-20T05:45:39', assoc: [] });
    const origin = t.components[0];
    const linear = origin.components[0];
    expect([origin.lvoltype, origin.lvolid, linear.lvoltype, linear.lvolid]).toEqual([6, 101, 1, 102]);
    expect(linear.components.map((m: any) => m.lvolid)).toEqual(Array.from({ length: 10 }, (_, i) => 103 + i)); // eslint-disable-line @typescript-eslint/no-explicit-any
    const m9 = linear.components[9];
    expect(m9).toMatchObject({ lvoltype: 2, capacity: 0, lvolspec: { segment: 9, offset_bytes: 9 * chunk, size_bytes: chunk } });
    expect(m9.components.map((d: any) => [d.lvolid, d.lvolspec.pdskid, d.lvolspec.ssvrid, d.lvolspec.offset, d.mirror_status])) // eslint-disable-line @typescript-eslint/no-explicit-any
      .toEqual([[1009, 1, 11, 2, 1], [2009, 2, 12, 2, 1], [3009, 3, 13, 2, 1]]);
    expect(hasFault(map)).toBe(false);
  });

  it('shows replica states as mirror_status and the volume as faulty', () => {
    expect(mirrorStatus('in_sync', false, true)).toBe(MIRROR_STATUS.ALLOCATED);
    expect(mirrorStatus('in_sync', false, false)).toBe(MIRROR_STATUS.INSYNC);
    expect(mirrorStatus('resyncing', false, false)).toBe(MIRROR_STATUS.SPARE);
    expect(mirrorStatus('in_sync', true, false)).toBe(MIRROR_STATUS.SPARE);
    expect(mirrorStatus('stale', false, false)).toBe(MIRROR_STATUS.FAULTY);
    const map = { ...buildChunkMap(4, 3, 10, placed), stale: [4] };
    expect(hasFault(map)).toBe(true);
    expect(lvolLabel(0x94e)).toBe('lvol-0000094e');
    expect(ctime(0)).toBe('1970-01-01T00:00:00');
  });
});

describe('XML-RPC transport', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-xmlrpc-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves / and /RPC2 by POST only, bounds the body, and asks for the token', async () => {
    const s = await startXmlRpcServer({ listen: '127.0.0.1:0', token: 'sekrit', maxBodyBytes: 1000 }, async (b) => `echo:${b.length}`);
    try {
      const u = new URL(s.url);
      const auth = `http://x:sekrit@${u.host}`;
      expect((await httpPost(s.url, '<a/>')).status).toBe(401);
      const ok = await fetch(`http://${u.host}/RPC2`, { method: 'POST', body: '<a/>', headers: { Authorization: `Basic ${Buffer.from('any:sekrit').toString('base64')}` } });
      expect([ok.status, await ok.text()]).toEqual([200, 'echo:4']);
      const bad = await fetch(`http://${u.host}/`, { method: 'POST', body: '<a/>', headers: { Authorization: `Basic ${Buffer.from('any:wrong').toString('base64')}` } });
      expect(bad.status).toBe(401);
      expect(auth).toContain('sekrit');
      expect((await httpPost(s.url.replace('/RPC2', '/other'), '<a/>')).status).toBe(404);
      expect((await httpPost(s.url, '', { method: 'GET' })).status).toBe(501);
    } finally {
      await s.close();
    }
    const open = await startXmlRpcServer({ listen: '127.0.0.1:0', maxBodyBytes: 1000 }, async (b) => `echo:${b.length}`);
    try {
      expect(await httpPost(open.url, 'x'.repeat(1000))).toEqual({ status: 200, body: 'echo:1000' });
      expect((await httpPost(open.url, 'x'.repeat(1001))).status).toBe(413);
      expect((await httpPost(open.url, { size: 5000, chunked: true })).status).toBe(413);
      expect(await httpPost(open.url, '<a/>')).toEqual({ status: 200, body: 'echo:4' });
    } finally {
      await open.close();
    }
  });

  it('serves HTTPS with the given certificate', async () => {
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1']);
    const s = await startXmlRpcServer({ listen: '127.0.0.1:0', tlsCert: cert, tlsKey: key, token: 't0ken' }, async () => 'hello');
    try {
      expect(s.url).toMatch(/^https:\/\//);
      const u = new URL(s.url);
      const body = await new Promise<string>((resolve, reject) => {
        const req = request({ host: u.hostname, port: u.port, path: '/RPC2', method: 'POST', rejectUnauthorized: false, auth: 'vsky:t0ken' }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => { text += c.toString(); });
          res.on('end', () => resolve(`${res.statusCode} ${text}`));
        });
        req.on('error', reject);
        req.end('<a/>');
      });
      expect(body).toBe('200 hello');
    } finally {
      await s.close();
    }
    // Python's xmlrpc.client over HTTPS with the token in the URL (basic auth), against the real dispatcher.
    const real = await startXmlRpcServer({ listen: '127.0.0.1:0', tlsCert: cert, tlsKey: key, token: 't0ken' }, (b) => handleBody({} as XmlRpcContext, b));
    try {
      const u = new URL(real.url);
      const script = 'import ssl, sys, xmlrpc.client\n'
        + 'ctx = ssl._create_unverified_context()\n'
        + 'print(len(xmlrpc.client.ServerProxy(sys.argv[1], context=ctx).system.listMethods()))\n'
        + 'try:\n    xmlrpc.client.ServerProxy(sys.argv[2], context=ctx).system.listMethods()\nexcept xmlrpc.client.ProtocolError as e:\n    print(e.errcode)\n';
      const r = await execa('python3', ['-c', script, `https://vsky:t0ken@${u.host}/RPC2`, `https://vsky:wrong@${u.host}/RPC2`]);
      const [count, refused] = r.stdout.trim().split('\n');
      expect(Number(count)).toBeGreaterThan(20);
      expect(refused).toBe('401');
      await expect(startXmlRpcServer({ listen: '127.0.0.1:0', tlsCert: cert }, async () => '')).rejects.toThrow(/both/);
    } finally {
      await s.close();
    }
  });
});
