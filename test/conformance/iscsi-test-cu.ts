import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';
import { startTgt } from './peers.js';

// `npm run conformance`: libiscsi's conformance suite (iscsi-test-cu -d) run
// against a 3-replica volume of ours and, in the same run, against tgt on a
// local file. Prints both summaries and writes every test's result per target
// to docs/iscsi-conformance-results.txt (a table of what differs).

interface Summary { total: number; ran: number; passed: number; failed: number; inactive: number; failures: Map<string, string> }

/** CUnit's normal mode prints only failures: "Suite S, Test T had failures:" then "  1. file:line - message". */
function parse(out: string): Summary {
  const failures = new Map<string, string>();
  const re = /^Suite (\S+), Test (\S+) had failures:\n\s+\d+\. (.*)$/gm;
  for (let m = re.exec(out); m !== null; m = re.exec(out)) {
    const name = `${m[1]}.${m[2]}`;
    const why = m[3]!.split('    [')[0]!.replace(/CU_FAIL\((.*)\)\s*$/, '$1').replace(/"\s*"/g, '').trim();
    failures.set(name, failures.has(name) ? `${failures.get(name)} (and in another family)` : why);
  }
  const t = /^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(out);
  const [total, ran, passed, failed, inactive] = t ? t.slice(1).map(Number) : [0, 0, 0, 0, 0];
  return { total: total!, ran: ran!, passed: passed!, failed: failed!, inactive: inactive!, failures };
}

async function runSuite(url: string, timeoutMs: number): Promise<{ summary: Summary; raw: string }> {
  const r = await execa('iscsi-test-cu', ['-d', '-n', url], { timeout: timeoutMs, reject: false, all: true });
  const raw = String(r.all ?? '');
  return { summary: parse(raw), raw };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-conformance-'));
  const size = 256 * MiB;
  const tgt = await startTgt(dir, size);
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, diskSize: 512 * MiB, chunkSize: 64 * MiB, logLevel: 'warn',
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)),
  });
  try {
    const ours = (await cluster.ensureVolumeUrls('conformance', size, 3)).iscsi;
    const timeout = 40 * 60_000;
    process.stderr.write(`iscsi-test-cu -d against tgt (${tgt.url})...\n`);
    const peer = await runSuite(tgt.url, timeout);
    process.stderr.write(`iscsi-test-cu -d against vsky (${ours})...\n`);
    const us = await runSuite(ours, timeout);
    writeFileSync(join(dir, 'tgt.log'), peer.raw);
    writeFileSync(join(dir, 'vsky.log'), us.raw);
    const line = (name: string, s: Summary): string =>
      `${name.padEnd(6)} total ${s.total}  ran ${s.ran}  passed ${s.passed}  failed ${s.failed}  inactive/skipped ${s.inactive}`;
    console.log(`\niscsi-test-cu -d (libiscsi conformance suite), same run:\n${line('tgt', peer.summary)}\n${line('vsky', us.summary)}`);
    const differ: string[] = [];
    for (const test of new Set([...us.summary.failures.keys(), ...peer.summary.failures.keys()])) {
      const ours = us.summary.failures.get(test);
      const theirs = peer.summary.failures.get(test);
      differ.push(`${test}\n  vsky: ${ours ?? 'passed'}\n  tgt:  ${theirs ?? 'passed'}`);
    }
    const out = join(process.cwd(), 'docs', 'iscsi-conformance-results.txt');
    writeFileSync(out, `# iscsi-test-cu -d: tests not passed by vsky or tgt (${new Date().toISOString()})\n${line('tgt', peer.summary)}\n${line('vsky', us.summary)}\n\n${differ.join('\n')}\n`);
    console.log(`\n${differ.length} tests not passed by one or both; listed in ${out}. Full logs: ${dir}/{tgt,vsky}.log`);
  } finally {
    await cluster.stop();
    await tgt.stop();
  }
}

await main();
