import type * as grpc from '@grpc/grpc-js';
import type { Registry } from 'prom-client';
import { HistogramFamily, collectedCounter } from '../shared/metrics/families.js';
import { LatencyHistogram } from '../shared/metrics/latency-histogram.js';

// Latency and errors of the manager's API calls, by API (grpc, xmlrpc) and
// method. Methods are known up front (the gRPC service's handlers, the
// XML-RPC method table), so the label set is bounded: a call to a method the
// API does not have is counted under method="unknown".

export type Api = 'grpc' | 'xmlrpc';

interface MethodStats {
  api: Api;
  method: string;
  latency: LatencyHistogram;
  errors: number;
}

export const UNKNOWN_METHOD = 'unknown';

export class ApiCallMetrics {
  private readonly byKey = new Map<string, MethodStats>();

  /** Declares the methods of an API (each shows in the metrics from the start, with zero calls). */
  declare(api: Api, methods: Iterable<string>): void {
    for (const m of [...methods, UNKNOWN_METHOD]) this.byKey.set(`${api} ${m}`, { api, method: m, latency: new LatencyHistogram(), errors: 0 });
  }

  /** Records one answered call; a method not declared counts as "unknown". */
  observe(api: Api, method: string, seconds: number, ok: boolean): void {
    const s = this.byKey.get(`${api} ${method}`) ?? this.byKey.get(`${api} ${UNKNOWN_METHOD}`);
    if (s === undefined) return;
    s.latency.observe(seconds);
    if (!ok) s.errors += 1;
  }

  all(): MethodStats[] {
    return [...this.byKey.values()];
  }

  register(registry: Registry): void {
    new HistogramFamily(registry, {
      name: 'vsky_manager_api_call_duration_seconds',
      help: 'Time the manager took to answer an API call, by API (grpc, xmlrpc) and method; _count is the number of calls.',
      labelNames: ['api', 'method'],
      read: () => this.all().map((s) => ({ labels: { api: s.api, method: s.method }, histogram: s.latency })),
    });
    collectedCounter(registry, {
      name: 'vsky_manager_api_call_errors_total',
      help: 'API calls answered with an error (gRPC status other than OK, XML-RPC fault), by API and method.',
      labelNames: ['api', 'method'],
      read: () => this.all().map((s) => ({ labels: { api: s.api, method: s.method }, value: s.errors })),
    });
  }
}

type UnaryHandlers = Record<string, grpc.UntypedHandleCall>;

/** The same handlers, each unary one timed into `metrics` under its method name. */
export function timedHandlers<H extends object>(handlers: H, metrics: ApiCallMetrics): H {
  const out: UnaryHandlers = {};
  const names = Object.keys(handlers);
  metrics.declare('grpc', names);
  for (const [method, handler] of Object.entries(handlers as UnaryHandlers)) {
    if (typeof handler !== 'function' || handler.length !== 2) {
      out[method] = handler;
      continue;
    }
    const unary = handler as grpc.handleUnaryCall<unknown, unknown>;
    out[method] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      const started = performance.now();
      unary(call, (err, value) => {
        metrics.observe('grpc', method, (performance.now() - started) / 1000, err === null || err === undefined);
        callback(err, value);
      });
    }) as grpc.UntypedHandleCall;
  }
  return out as H;
}
