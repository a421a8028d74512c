// `--metrics ADDR` of `vhost-tap vhost-user` and `vhost-tap run`: the address
// checked as a usage error (exit 2), the endpoint started, and how the ready
// line names it. The exposition itself is backend/metrics.ts.

import { InvalidArgumentError, MetricsEndpoint, MetricsSnapshot, parseMetricsAddress, serveMetrics } from '../backend';
import { UsageError } from './args';

/** The --metrics value checked (undefined when not given); a bad one is a UsageError. */
export function metricsAddress(v: string | boolean | undefined): string | undefined {
  if (v === undefined) return undefined;
  try {
    parseMetricsAddress(String(v));
  } catch (e) {
    throw new UsageError(`--metrics: ${(e as Error).message}`);
  }
  return String(v);
}

/** Starts the endpoint; an address it cannot listen on (in use, not local, no permission) is a UsageError. */
export async function listenMetrics(address: string, collect: () => MetricsSnapshot): Promise<MetricsEndpoint> {
  try {
    return await serveMetrics(address, collect);
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw new UsageError(`--metrics: ${e.message}`);
    throw e;
  }
}

/** Where to scrape: http://HOST:PORT/metrics, or the Unix socket and the path on it. */
export function metricsUrl(address: string): string {
  return address.startsWith('unix:') ? `${address} (GET /metrics)` : `http://${address}/metrics`;
}
