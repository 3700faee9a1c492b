/**
 * One request to the ingest API and what its answer means for the records in it. The API is
 * all-or-nothing per request: 202 stores every record, anything else stores none.
 */

import type { AuditRecord } from './record.js';

export type Outcome =
  | { kind: 'sent' }
  /** 422: these records (by index) can never be stored; the rest may be sent again. */
  | { kind: 'invalid'; reasons: Map<number, string> }
  /** 413: the request was too large; send fewer at once. */
  | { kind: 'too-large' }
  /** 401: the token is missing, expired or wrong; get a new one. */
  | { kind: 'unauthorized'; reason: string }
  /** Worth trying again later: network down, 408, 429, 5xx, or a 403 an operator may fix. */
  | { kind: 'retry'; reason: string; afterMs?: number }
  /** The whole request can never be stored (400, 415): a defect, reported and dropped. */
  | { kind: 'refused'; reason: string };

export type FetchLike = (url: string, init: RequestInit & { keepalive?: boolean }) => Promise<Response>;

async function reasonOf(response: Response): Promise<{ text: string; body: unknown }> {
  let body: unknown;
  let text = `HTTP ${response.status}`;
  try {
    body = await response.json();
    const error = (body as { error?: unknown }).error;
    if (typeof error === 'string') text += `: ${error}`;
  } catch {
    // not JSON
  }
  return { text, body };
}

export async function send(
  fetcher: FetchLike,
  endpoint: string,
  token: string | undefined,
  records: AuditRecord[],
  keepalive = false,
): Promise<Outcome> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  let response: Response;
  try {
    response = await fetcher(endpoint, {
      method: 'POST',
      headers,
      body: JSON.stringify(records),
      keepalive,
      credentials: 'omit',
    });
  } catch (e) {
    return { kind: 'retry', reason: `network: ${(e as Error)?.message ?? e}` };
  }
  if (response.status === 202 || response.status === 200) {
    // Read the body so the connection can be reused.
    await response.arrayBuffer().catch(() => undefined);
    return { kind: 'sent' };
  }
  const { text, body } = await reasonOf(response);
  switch (response.status) {
    case 422: {
      const reasons = new Map<number, string>();
      const errors = (body as { errors?: { index: number; path: string; reason: string }[] })?.errors ?? [];
      for (const e of errors) {
        const before = reasons.get(e.index);
        const line = `${e.path}: ${e.reason}`;
        reasons.set(e.index, before ? `${before}; ${line}` : line);
      }
      // A listing cut short (errors_truncated) names no index for the rest; they are retried
      // and named in the next answer.
      return reasons.size ? { kind: 'invalid', reasons } : { kind: 'refused', reason: text };
    }
    case 413:
      return { kind: 'too-large' };
    case 401:
      return { kind: 'unauthorized', reason: text };
    case 400:
    case 415:
      return { kind: 'refused', reason: text };
    default: {
      const after = Number(response.headers.get('retry-after'));
      return {
        kind: 'retry',
        reason: text,
        afterMs: Number.isFinite(after) && after > 0 ? after * 1000 : undefined,
      };
    }
  }
}
