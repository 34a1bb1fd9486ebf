#!/usr/bin/env python3
"""A VastSky 3.0 client against the VastSky-TS manager, with Python's stdlib xmlrpc.client.

Calls are made as VastSky's own tools make them (vas_subr.send_request: a new
ServerProxy per call, one struct argument, 'ver' added by the caller), and the
output is printed the way lvol_create.py, lvol_show.py, lvol_list.py and
pdsk_list.py print it. The last line of every command is a JSON summary that
test/integration/xmlrpc.test.ts checks.

  vastsky_client.py call URL METHOD JSON-STRUCT     one call (no 'ver' added)
  vastsky_client.py serve URL                       calls read as JSON lines {"method", "struct"} from stdin, one answer line each
  vastsky_client.py workflow URL                    VASSR.py-style volume life cycle with I/O
  vastsky_client.py errors URL                      every documented error case
"""
import json
import os
import subprocess
import sys
import xmlrpc.client

XMLRPC_VERSION = 5
MIRROR_STATUS_STR = {0: '---', 1: 'ALLOCATED', 2: 'INSYNC', 3: 'SPARE', 4: 'FAULTY', 5: 'ALLOCATED'}
ALLOC_PRIORITY_STR = {1: 'HIGH', 2: 'LOW', 3: 'EVACUATE', 4: 'OFFLINE', 5: 'FAULTY', 6: 'HALT'}
LVOLTYPE = {'LVOL': 0, 'LINEAR': 1, 'MIRROR': 2, 'DEXT': 3, 'SNAPSHOT-ORIGIN': 6, 'SNAPSHOT': 7}
GB = 1024 ** 3


def send_request(url, method, data):
    """vas_subr.send_request for one host: a new proxy per call, one struct argument."""
    agent = xmlrpc.client.ServerProxy(url)
    return getattr(agent, method)(data)


def vas(url, method, args):
    """VASSR.py's vas_send_request: the caller adds ver."""
    args = dict(args)
    args['ver'] = XMLRPC_VERSION
    return send_request(url, method, args)


def fault_of(fn):
    try:
        fn()
        return 0
    except xmlrpc.client.Fault as inst:
        return inst.faultCode


def id8(prefix, n):
    return '%s-%08x' % (prefix, n)


def pdsk_list(url):
    disks = vas(url, 'listPhysicalDisks', {})
    total = sum(d['capacity'] for d in disks)
    avail = sum(d['available'] for d in disks)
    use = (total - avail) * 100 // total if total else 0
    print('%-14s %-14s %-14s' % ('total %d GB' % total, 'available %d GB' % avail, 'use%% %d%%' % use))
    print('pdskid         ssvrid         priority resync   capacity  available  use% local_path')
    for d in disks:
        use = (d['capacity'] - d['available']) * 100 // d['capacity'] if d['capacity'] else 0
        print('%-14s %-14s %-9s%6s %10s %10s %5s %-18s' % (
            id8('pdsk', d['pdskid']), id8('ssvr', d['ssvrid']), ALLOC_PRIORITY_STR[d['priority']], d['resync'],
            '%d GB' % d['capacity'], '%d GB' % d['available'], '%d%%' % use, d['local_path']))
    return disks


def lvol_list(url, args=None):
    lvols = vas(url, 'listLogicalVolumes', args or {})
    print('%-14s %-12s %12s %8s %-14s %-12s %-19s' % ('lvolid', 'lvolname', 'redundancy', 'capacity', ' hsvrid', 'failure', 'ctime'))
    for l in lvols:
        if not l['hsvrid']:
            hsvr = ' ---'
        elif l['bind_status'] == 2:
            hsvr = '*' + id8('hsvr', l['hsvrid'])
        elif l['bind_event'] == 1:
            hsvr = '+' + id8('hsvr', l['hsvrid'])
        elif l['bind_event'] == 2:
            hsvr = '-' + id8('hsvr', l['hsvrid'])
        else:
            hsvr = ' ' + id8('hsvr', l['hsvrid'])
        print('%-14s %-12s %12s %8s %-14s %-12s %-19s' % (
            id8('lvol', l['lvolid']), l['lvolname'], l['redundancy'], '%d GB' % l['capacity'], hsvr,
            'yes' if l['fault'] else '---', l['ctime']))
    return lvols


def lvol_show(url, lvolid):
    """lvol_show.py: asserts LVOL > SNAPSHOT(-ORIGIN) > LINEAR and prints the mirrors and their extents."""
    lvol = vas(url, 'showLogicalVolume', {'lvolid': lvolid})
    assert lvol['lvoltype'] == LVOLTYPE['LVOL'], lvol['lvoltype']
    origin = lvol['components'][0]
    assert origin['lvoltype'] in (LVOLTYPE['SNAPSHOT-ORIGIN'], LVOLTYPE['SNAPSHOT']), origin['lvoltype']
    linear = origin['components'][0]
    assert linear['lvoltype'] == LVOLTYPE['LINEAR'], linear['lvoltype']
    redundancy = len(linear['components'][0]['components'])
    print('lvolid: %s lvol_name: %s capacity: %d GB redundancy: %d' % (
        id8('lvol', lvol['lvolid']), lvol['lvolspec']['lvolname'], lvol['capacity'], redundancy))
    print('mirror           offset capacity | disk-extent    physical-disk    offset server         sync')
    offset = 0
    mirrors = []
    for mirror in linear['components']:
        assert mirror['lvoltype'] == LVOLTYPE['MIRROR']
        print('%-14s %8s %8s |' % (id8('mirr', mirror['lvolid']), '%d GB' % offset, '%d GB' % mirror['capacity']))
        dexts = []
        for dext in mirror['components']:
            assert dext['lvoltype'] == LVOLTYPE['DEXT']
            spec = dext['lvolspec']
            print('%-14s %8s %8s | %-14s %-14s %8s %-14s %-5s' % (
                '', '', '', id8('dext', dext['lvolid']), id8('pdsk', spec['pdskid']), '%d GB' % spec['offset'],
                id8('ssvr', spec['ssvrid']), MIRROR_STATUS_STR[dext['mirror_status']]))
            dexts.append({'dextid': dext['lvolid'], 'pdskid': spec['pdskid'], 'ssvrid': spec['ssvrid'], 'status': dext['mirror_status']})
        mirrors.append({'mirrorid': mirror['lvolid'], 'bytes': mirror['lvolspec']['size_bytes'], 'dexts': dexts})
        offset += mirror['capacity']
    return {'lvol': lvol, 'redundancy': redundancy, 'mirrors': mirrors,
            'ids': [lvol['lvolid'], origin['lvolid'], linear['lvolid']], 'keys': sorted(lvol.keys())}


def qemu_io(uri, cmd):
    r = subprocess.run(['qemu-io', '-f', 'raw', '-c', cmd, uri], capture_output=True, text=True, timeout=60)
    ok = r.returncode == 0 and 'Pattern verification failed' not in r.stdout and 'error' not in r.stdout.lower()
    return ok, (r.stdout + r.stderr).strip()


def workflow(url):
    out = {}
    servers = vas(url, 'listStorageServers', {})
    for s in servers:
        print('%-14s %-9s %5s %10s %10s' % (id8('ssvr', s['ssvrid']), ALLOC_PRIORITY_STR[s['priority']], s['resync'],
                                            '%d GB' % s['capacity'], '%d GB' % s['available']))
        for ip in s['ip_data']:
            print('\tinet %s' % ip)
    disks = pdsk_list(url)
    heads = vas(url, 'listHeadServers', {})
    out['servers'] = len(servers)
    out['disks'] = len(disks)
    out['heads'] = len(heads)
    hsvrid = heads[0]['hsvrid']
    # vdi_create: capacity = ceil(size / 2**30), no redundancy (the server's default 3), name xcp-<uuid>.
    name = 'xcp-3b8f7d0e-1c2a-4e5f-9a6b-7c8d9e0f1a2b'
    lvolid = vas(url, 'createLogicalVolume', {'lvolname': name, 'capacity': 1})
    print(id8('lvol', lvolid))
    out['lvolid'] = lvolid
    shown = lvol_show(url, lvolid)
    out['show'] = {'redundancy': shown['redundancy'], 'mirrors': len(shown['mirrors']), 'ids': shown['ids'], 'keys': shown['keys'],
                   'bytes': sum(m['bytes'] for m in shown['mirrors']),
                   'distinct_servers': all(len(set(d['ssvrid'] for d in m['dexts'])) == len(m['dexts']) for m in shown['mirrors']),
                   'statuses': sorted(set(d['status'] for m in shown['mirrors'] for d in m['dexts'])),
                   'labels': shown['lvol']['labels'], 'capacity': shown['lvol']['capacity']}
    # sr_scan / VASSR reads only lvolid and capacity.
    listed = [l for l in lvol_list(url) if l['lvolid'] == lvolid]
    out['before_attach'] = [listed[0][k] for k in ('hsvrid', 'bind_status', 'bind_event', 'capacity', 'redundancy', 'fault')]
    # vdi_activate sends lvolid as a string.
    out['attach'] = vas(url, 'attachLogicalVolume', {'lvolid': str(lvolid), 'hsvrid': hsvrid})
    entry = vas(url, 'listLogicalVolumes', {'lvolid': lvolid})[0]
    out['after_attach'] = [entry[k] for k in ('hsvrid', 'bind_status', 'bind_event')]
    out['hsvrid'] = hsvrid
    uri = entry['nbd_uri']
    out['nbd_uri'] = uri
    out['write'] = qemu_io(uri, 'write -P 0xa5 0 4M')[0] and qemu_io(uri, 'write -P 0x5a %d 1M' % (GB - 1024 * 1024))[0]
    out['read'] = qemu_io(uri, 'read -P 0xa5 0 4M')[0] and qemu_io(uri, 'read -P 0x5a %d 1M' % (GB - 1024 * 1024))[0]
    out['statuses_attached'] = sorted(set(d['status'] for m in lvol_show(url, lvolid)['mirrors'] for d in m['dexts']))
    out['detach'] = vas(url, 'detachLogicalVolume', {'lvolid': int(lvolid)})
    entry = vas(url, 'listLogicalVolumes', {'lvolname': name})[0]
    out['after_detach'] = [entry[k] for k in ('hsvrid', 'bind_status', 'bind_event')]
    out['detach_again'] = vas(url, 'detachLogicalVolume', {'lvolid': lvolid})
    out['delete'] = vas(url, 'deleteLogicalVolume', {'lvolid': int(lvolid)})
    out['list_deleted'] = fault_of(lambda: vas(url, 'listLogicalVolumes', {'lvolid': lvolid}))
    print(json.dumps(out))


def errors(url, ctx):
    """Each case: (name, expected fault code or 0, call). ctx carries ids from the test's cluster."""
    v = lambda m, a: (lambda: vas(url, m, a))
    raw = lambda m, *p: (lambda: getattr(xmlrpc.client.ServerProxy(url), m)(*p))
    busy, free, hs, ss, pd = ctx['busy_lvolid'], ctx['free_lvolid'], ctx['hsvrid'], ctx['ssvrid'], ctx['pdskid']
    cases = [
        ('no ver', 71, raw('listLogicalVolumes', {})),
        ('ver 3 (VastSky 2.1)', 71, raw('listLogicalVolumes', {'ver': 3})),
        ('ver as a string', 71, raw('listLogicalVolumes', {'ver': '5'})),
        ('ver missing on a mutating call', 71, raw('deleteLogicalVolume', {'lvolid': free})),
        ('unknown method', 1, raw('fooBar', {'ver': 5})),
        ('notifyShredFinished (dropped in 3.0)', 1, v('notifyShredFinished', {})),
        ('notifyRebuildMirrorFinished (dropped in 3.0)', 1, v('notifyRebuildMirrorFinished', {'mirrorid': 1, 'dexts': []})),
        ('helloWorld (agents only)', 1, v('helloWorld', {})),
        ('no params', 1, raw('listLogicalVolumes')),
        ('an int instead of the struct', 1, raw('listLogicalVolumes', 5)),
        ('two params', 1, raw('listLogicalVolumes', {'ver': 5}, {'ver': 5})),
        ('create: redundancy 1', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 1, 'redundancy': 1})),
        ('create: redundancy 10', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 1, 'redundancy': 10})),
        ('create: redundancy as a string', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 1, 'redundancy': '3'})),
        ('create: no lvolname', 22, v('createLogicalVolume', {'capacity': 1})),
        ('create: lvolname with /', 22, v('createLogicalVolume', {'lvolname': 'a/b', 'capacity': 1})),
        ('create: lvolname ..', 22, v('createLogicalVolume', {'lvolname': '..', 'capacity': 1})),
        ('create: lvolname lvol-<hex>', 22, v('createLogicalVolume', {'lvolname': 'lvol-0000abcd', 'capacity': 1})),
        ('create: lvolname of 65 chars', 22, v('createLogicalVolume', {'lvolname': 'x' * 65, 'capacity': 1})),
        ('create: lvolname an int', 22, v('createLogicalVolume', {'lvolname': 7, 'capacity': 1})),
        ('create: no capacity', 22, v('createLogicalVolume', {'lvolname': 'e1'})),
        ('create: capacity as a string', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': '1'})),
        ('create: capacity a boolean', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': True})),
        ('create: capacity a double', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 1.0})),
        ('create: capacity 0', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 0})),
        ('create: capacity over MAX_LENGTH', 22, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 1048577})),
        ('create: the name exists', 17, v('createLogicalVolume', {'lvolname': ctx['busy_name'], 'capacity': 1})),
        ('create: no space', 28, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 100000})),
        ('create: redundancy 9 on 3 servers', 28, v('createLogicalVolume', {'lvolname': 'e1', 'capacity': 1, 'redundancy': 9})),
        ('delete: neither id nor name', 22, v('deleteLogicalVolume', {})),
        ('delete: lvolid 0 and lvolname empty', 22, v('deleteLogicalVolume', {'lvolid': 0, 'lvolname': ''})),
        ('delete: unknown lvolid', 2, v('deleteLogicalVolume', {'lvolid': 999999})),
        ('delete: unknown lvolname', 2, v('deleteLogicalVolume', {'lvolname': 'nope'})),
        ('delete: attached', 16, v('deleteLogicalVolume', {'lvolid': busy})),
        ('attach: no hsvrid', 22, v('attachLogicalVolume', {'lvolid': free})),
        ('attach: no hsvrid, unknown volume (hsvrid checked first)', 22, v('attachLogicalVolume', {'lvolid': 999999})),
        ('attach: unknown volume', 2, v('attachLogicalVolume', {'lvolid': 999999, 'hsvrid': hs})),
        ('attach: already attached', 16, v('attachLogicalVolume', {'lvolid': busy, 'hsvrid': hs})),
        ('attach: unknown hsvrid', 22, v('attachLogicalVolume', {'lvolid': free, 'hsvrid': 9999})),
        ('attach: hsvrid a double', 22, v('attachLogicalVolume', {'lvolid': free, 'hsvrid': 1.5})),
        ('detach: unknown volume', 2, v('detachLogicalVolume', {'lvolname': 'nope'})),
        ('detach: not attached (idempotent)', 0, v('detachLogicalVolume', {'lvolid': free})),
        ('list: lvolid 0', 22, v('listLogicalVolumes', {'lvolid': 0})),
        ('list: unknown lvolid', 2, v('listLogicalVolumes', {'lvolid': 999999})),
        ('list: unknown lvolname', 2, v('listLogicalVolumes', {'lvolname': 'nope'})),
        ('list: lvolid a list', 2, v('listLogicalVolumes', {'lvolid': [1]})),
        ('show: neither id nor name', 22, v('showLogicalVolume', {})),
        ('show: unknown', 2, v('showLogicalVolume', {'lvolid': 999999})),
        ('listHeadServers: unknown hsvrid', 2, v('listHeadServers', {'hsvrid': 9999})),
        ('listStorageServers: unknown ssvrid', 2, v('listStorageServers', {'ssvrid': 9999})),
        ('listPhysicalDisks: unknown ssvrid', 2, v('listPhysicalDisks', {'ssvrid': 9999})),
        ('notifyFailure: no target', 22, v('notifyFailure', {'targetid': 1})),
        ('notifyFailure: no targetid', 22, v('notifyFailure', {'target': 3})),
        ('notifyFailure: target 5', 22, v('notifyFailure', {'target': 5, 'targetid': 1})),
        ('notifyFailure: target a string', 22, v('notifyFailure', {'target': '3', 'targetid': 1})),
        ('notifyFailure: unknown disk extent', 2, v('notifyFailure', {'target': 4, 'targetid': 2000000000})),
        ('notifyFailure: unknown pdskid is not an error', 0, v('notifyFailure', {'target': 3, 'targetid': 9999})),
        ('notifyFailure: unknown hsvrid is not an error', 0, v('notifyFailure', {'target': 1, 'targetid': 9999})),
        ('notifyBadBlocks: no blocks', 22, v('notifyBadBlocks', {'pdskid': pd})),
        ('notifyBadBlocks: unknown pdskid', 500, v('notifyBadBlocks', {'pdskid': 9999, 'blocks': [0]})),
        ('notifyBadBlocks: a block that is a string', 22, v('notifyBadBlocks', {'pdskid': pd, 'blocks': ['x']})),
        ('notifyBadBlocks: past the disk end is ignored', 0, v('notifyBadBlocks', {'pdskid': pd, 'blocks': [100000]})),
        ('registerHeadServer: no ip_data', 22, v('registerHeadServer', {})),
        ('registerHeadServer: empty ip_data', 22, v('registerHeadServer', {'ip_data': []})),
        ('registerHeadServer: not a dotted quad', 22, v('registerHeadServer', {'ip_data': ['host']})),
        ('registerHeadServer: an int in ip_data', 500, v('registerHeadServer', {'ip_data': [1]})),
        ('registerHeadServer: online head', 17, v('registerHeadServer', {'ip_data': ctx['head_ips']})),
        ('registerStorageServer: online server', 17, v('registerStorageServer', {'ip_data': ctx['server_ips']})),
        ('registerPhysicalDisk: no capacity', 22, v('registerPhysicalDisk', {'ssvrid': ss, 'local_path': '/x'})),
        ('registerPhysicalDisk: unknown ssvrid', 22, v('registerPhysicalDisk', {'ssvrid': 9999, 'local_path': '/x', 'capacity': '4194304'})),
        ('registerPhysicalDisk: capacity not a number', 22, v('registerPhysicalDisk', {'ssvrid': ss, 'local_path': '/x', 'capacity': 'abc'})),
        ('registerPhysicalDisk: capacity 0', 22, v('registerPhysicalDisk', {'ssvrid': ss, 'local_path': '/x', 'capacity': '0'})),
        ('registerPhysicalDisk: registered and online', 17, v('registerPhysicalDisk', {'ssvrid': ss, 'local_path': ctx['pdsk_path'], 'capacity': '4194304'})),
        ('deletePhysicalDisk: no pdskid', 22, v('deletePhysicalDisk', {})),
        ('deletePhysicalDisk: unknown', 2, v('deletePhysicalDisk', {'pdskid': 9999})),
        ('deletePhysicalDisk: online', 16, v('deletePhysicalDisk', {'pdskid': pd})),
        ('deleteStorageServer: unknown', 2, v('deleteStorageServer', {'ssvrid': 9999})),
        ('deleteStorageServer: online', 16, v('deleteStorageServer', {'ssvrid': ss})),
        ('deleteHeadServer: unknown', 2, v('deleteHeadServer', {'hsvrid': 9999})),
        ('deleteHeadServer: online', 16, v('deleteHeadServer', {'hsvrid': hs})),
        ('shutdownAll: volumes attached', 16, v('shutdownAll', {})),
        ('createSnapshot: unknown origin', 2, v('createSnapshot', {'origin_lvolid': 999999, 'snapshot_lvolname': 's'})),
        ('createSnapshot: no origin', 22, v('createSnapshot', {'snapshot_lvolname': 's'})),
        ('createSnapshot: no snapshot name', 22, v('createSnapshot', {'origin_lvolid': free})),
        ('createSnapshot: snapshot name like an id', 22, v('createSnapshot', {'origin_lvolid': free, 'snapshot_lvolname': 'lvol-00ab'})),
        ('createSnapshot: snapshot name with /', 22, v('createSnapshot', {'origin_lvolid': free, 'snapshot_lvolname': 'a/b'})),
        ('createSnapshot: snapshot name taken', 17, v('createSnapshot', {'origin_lvolid': free, 'snapshot_lvolname': ctx['busy_name']})),
        ('handoff: unknown hsvrid', 22, v('handoffLogicalVolume', {'lvolid': busy, 'hsvrid': 9999})),
        ('setAccessRules: bad initiator', 22, v('setAccessRules', {'lvolid': free, 'initiators': ['not-an-iqn']})),
        ('setAccessRules: short CHAP secret', 22, v('setAccessRules', {'lvolid': free, 'chap_user': 'u', 'chap_secret': 'short'})),
        ('listEvents: limit a string', 22, v('listEvents', {'limit': 'x'})),
    ]
    results = []
    for name, want, fn in cases:
        got = fault_of(fn)
        results.append({'case': name, 'want': want, 'got': got})
        print('%-60s want %3d got %3d %s' % (name, want, got, 'ok' if want == got else 'MISMATCH'))
    print(json.dumps(results))


def answer(url, method, struct):
    try:
        return {'ok': send_request(url, method, struct)}
    except xmlrpc.client.Fault as inst:
        return {'fault': [inst.faultCode, inst.faultString]}
    except xmlrpc.client.ProtocolError as inst:
        return {'http': [inst.errcode, inst.errmsg]}


def call(url, method, struct_json):
    print(json.dumps(answer(url, method, json.loads(struct_json))))


def serve(url):
    """One Python process for many calls (each still a new ServerProxy, as send_request does)."""
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(answer(url, req['method'], req['struct'])), flush=True)


def main():
    cmd, url = sys.argv[1], sys.argv[2]
    if cmd == 'call':
        call(url, sys.argv[3], sys.argv[4])
    elif cmd == 'serve':
        serve(url)
    elif cmd == 'workflow':
        workflow(url)
    elif cmd == 'errors':
        errors(url, json.loads(sys.argv[3]))
    else:
        sys.exit('unknown command ' + cmd)


if __name__ == '__main__':
    main()
