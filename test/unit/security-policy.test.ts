import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { POLICY, isAllowed, rolesAllowed, splitMethodPath } from '../../shared/security/policy.js';
import { ROLES } from '../../shared/security/identity.js';

// The role table (shared/security/policy.ts) against the .proto files: every
// rpc of every service has an entry (a new rpc without one fails here), no
// entry names an rpc that does not exist, and the rules the roles promise hold.

/** service (package.Service) -> its rpc names, read from proto/*.proto. */
function protoServices(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const file of readdirSync('proto').filter((f) => f.endsWith('.proto'))) {
    const text = readFileSync(join('proto', file), 'utf8').replace(/\/\/[^\n]*/g, '');
    const pkg = /^\s*package\s+([\w.]+)\s*;/m.exec(text)?.[1] ?? '';
    for (const m of text.matchAll(/service\s+(\w+)\s*\{([\s\S]*?)\n\}/g)) {
      out.set(`${pkg}.${m[1]}`, [...m[2]!.matchAll(/\brpc\s+(\w+)\s*\(/g)].map((r) => r[1]!));
    }
  }
  return out;
}

const services = protoServices();
const path = (service: string, method: string): string => `/${service}/${method}`;

describe('gRPC role policy', () => {
  it('finds the three services of proto/ with their rpcs (the parse works)', () => {
    expect([...services.keys()].sort()).toEqual(['vsky.head.HeadAgent', 'vsky.manager.Manager', 'vsky.storage.StorageNode']);
    expect(services.get('vsky.manager.Manager')).toContain('CreateVolume');
    expect(services.get('vsky.storage.StorageNode')).toContain('SetDiskFault');
    expect([...services.values()].flat().length).toBeGreaterThan(45);
  });

  for (const [service, rpcs] of services) {
    it(`${service}: every rpc has an entry, and every entry is an rpc`, () => {
      const table = POLICY[service];
      expect(table, `POLICY has no table for ${service}`).toBeDefined();
      expect(rpcs.filter((r) => !(r in table!)), `rpcs of ${service} missing from shared/security/policy.ts`).toEqual([]);
      expect(Object.keys(table!).filter((k) => !rpcs.includes(k)), `entries for rpcs ${service} does not have`).toEqual([]);
    });
  }

  it('admin may call every rpc', () => {
    for (const [service, rpcs] of services) for (const r of rpcs) expect(isAllowed('admin', path(service, r)), r).toBe(true);
  });

  it('readonly may call only reads (List*, Get*, Show*, Status) and nothing that changes state', () => {
    for (const [service, rpcs] of services) {
      for (const r of rpcs) {
        if (isAllowed('readonly', path(service, r))) expect(r, `${service}/${r} is open to readonly`).toMatch(/^(List|Get|Show|Status)/);
      }
    }
    expect(isAllowed('readonly', '/vsky.manager.Manager/ListVolumes')).toBe(true);
    expect(isAllowed('readonly', '/vsky.manager.Manager/ShowVolume')).toBe(true);
    expect(isAllowed('readonly', '/vsky.manager.Manager/DeleteVolume')).toBe(false);
  });

  it('a head may do what heads do and no administration', () => {
    for (const r of ['RegisterHead', 'HeadHeartbeat', 'AcquireLease', 'ReportReplicaFailure', 'ReportJob', 'ReportResyncProgress']) {
      expect(isAllowed('head', path('vsky.manager.Manager', r)), r).toBe(true);
    }
    for (const r of ['CreateVolume', 'DeleteVolume', 'AttachVolume', 'RegisterServer', 'FailDisk', 'SubmitJob', 'ListVolumes']) {
      expect(isAllowed('head', path('vsky.manager.Manager', r)), r).toBe(false);
    }
    expect(isAllowed('head', '/vsky.storage.StorageNode/FreeChunk')).toBe(false);
    expect(isAllowed('head', '/vsky.head.HeadAgent/Attach')).toBe(false);
  });

  it('storage nodes and the manager call only their peers\' methods', () => {
    expect(isAllowed('node', '/vsky.manager.Manager/RegisterServer')).toBe(true);
    expect(isAllowed('node', '/vsky.manager.Manager/RegisterHead')).toBe(false);
    expect(isAllowed('node', '/vsky.storage.StorageNode/AllocateChunk')).toBe(false);
    expect(isAllowed('manager', '/vsky.storage.StorageNode/AllocateChunk')).toBe(true);
    expect(isAllowed('manager', '/vsky.head.HeadAgent/Attach')).toBe(true);
    expect(isAllowed('manager', '/vsky.manager.Manager/CreateVolume')).toBe(false);
    // Fault injection is for people only.
    for (const role of ROLES) expect(isAllowed(role, '/vsky.storage.StorageNode/SetDiskFault'), role).toBe(role === 'admin');
  });

  it('health and reflection are open to every role; unknown methods only to admin', () => {
    for (const role of ROLES) expect(isAllowed(role, '/grpc.health.v1.Health/Check'), role).toBe(true);
    expect(rolesAllowed('/vsky.manager.Manager/NoSuchRpc')).toEqual(['admin']);
    expect(rolesAllowed('/other.Service/X')).toEqual(['admin']);
    expect(splitMethodPath('/a.B/C')).toEqual({ service: 'a.B', method: 'C' });
  });
});
