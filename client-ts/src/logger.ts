/**
 * The logger: calls become records at once (id and time fixed), records queue in memory
 * (mirrored to a store), and a pump sends them in batches. A call never waits for the network
 * and never throws for a network reason; what cannot be sent waits, bounded, oldest dropped
 * first and counted.
 */

import { capture, errorInfo } from './errors.js';
import {
  build,
  sizeOf,
  type AuditRecord,
  type Defaults,
  type Entity,
  type EventFields,
  type Json,
} from './record.js';
import { FileStore, IndexedDbStore, MemoryStore, type Store } from './store.js';
import { send, type FetchLike, type Outcome } from './transport.js';

export interface LoggerOptions {
  /** The ingest API's events URL, e.g. `https://audit.example.com/v1/events`. */
  endpoint: string;
  /**
   * The bearer token: in a browser, the short-lived browser token the platform minted for the
   * logged-in user (never a service token); in Node, a service token. A function is asked again
   * when the token is about to expire or was refused.
   */
  token?: string | (() => string | undefined | Promise<string | undefined>);
  /** Fields every record gets unless the call gives its own. */
  defaults?: Defaults;
  /** Most records in one request. Default 100. */
  batchSize?: number;
  /**
   * How long to wait for more records before sending a part batch, in ms. Default 0: the
   * records of one synchronous burst go together, and a lone record waits for nothing.
   */
  lingerMs?: number;
  /** Most records waiting; past it the oldest are dropped and counted. Default 10 000. */
  maxQueueRecords?: number;
  /** Most bytes (JSON) waiting; past it the oldest are dropped and counted. Default 5 MiB. */
  maxQueueBytes?: number;
  /** Largest request body. Default 512 KiB (the API takes 1 MiB by default). */
  maxBatchBytes?: number;
  /** Requests in flight at once. Default 4. */
  maxConcurrentRequests?: number;
  /** First retry delay, doubled per failure up to `retryMaxMs`. Defaults 1 s and 60 s. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /**
   * Keep waiting records across restarts: `true` uses IndexedDB in a browser; a string is a
   * file path (Node); or any {@link Store}. Default: IndexedDB in a browser, none in Node.
   */
  persist?: boolean | string | Store;
  /** Log uncaught errors and unhandled rejections. Default false. */
  captureErrors?: boolean;
  /** Send what waits when the page is hidden or closed (fetch keepalive). Default true. */
  flushOnPageHide?: boolean;
  /** The fetch to use; default the global one. */
  fetch?: FetchLike;
  /** Told about records the API refused for good, drops, and send failures. */
  onProblem?: (problem: Problem) => void;
}

/** Something the application may want to know; the logger goes on either way. */
export type Problem =
  | { kind: 'invalid'; record: AuditRecord; reason: string }
  | { kind: 'dropped'; count: number; reason: 'queue-full' | 'too-large' }
  | { kind: 'send-failed'; reason: string; retryInMs: number }
  | { kind: 'call'; reason: string };

export interface Stats {
  queued: number;
  queuedBytes: number;
  sent: number;
  dropped: number;
  invalid: number;
}

/** Extra fields the defaults hook returns for each record, e.g. the current page. */
export type DefaultsHook = () => Defaults | undefined;

interface Entry {
  record: AuditRecord;
  size: number;
}

/** A keepalive request's body may not exceed 64 KiB in browsers; stay below it. */
const KEEPALIVE_BYTES = 60 * 1024;

export class Logger {
  private readonly options: Required<
    Pick<
      LoggerOptions,
      | 'batchSize'
      | 'lingerMs'
      | 'maxQueueRecords'
      | 'maxQueueBytes'
      | 'maxBatchBytes'
      | 'maxConcurrentRequests'
      | 'retryMinMs'
      | 'retryMaxMs'
    >
  > &
    LoggerOptions;
  private queue: Entry[] = [];
  private queuedBytes = 0;
  private readonly inFlight = new Set<string>();
  private readonly store: Promise<Store>;
  /** The store once open, for the one synchronous use: a dying process. */
  private openedStore: Store | undefined;
  private readonly ready: Promise<void>;
  private storing: Promise<void> = Promise.resolve();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private pumping = false;
  private failures = 0;
  private batchLimit: number;
  private token: string | undefined;
  private tokenExpiresAt = 0;
  private closed = false;
  private drops: { count: number; first: string; last: string; report?: AuditRecord } | undefined;
  private readonly counts = { sent: 0, dropped: 0, invalid: 0 };
  private readonly uninstall: (() => void)[] = [];
  private readonly fetcher: FetchLike;

  constructor(options: LoggerOptions, private readonly defaultsHook?: DefaultsHook) {
    if (!options || typeof options.endpoint !== 'string' || !options.endpoint) {
      throw new TypeError('Logger: options.endpoint (the ingest API events URL) is required');
    }
    this.options = {
      batchSize: 100,
      lingerMs: 0,
      maxQueueRecords: 10_000,
      maxQueueBytes: 5 * 1024 * 1024,
      maxBatchBytes: 512 * 1024,
      maxConcurrentRequests: 4,
      retryMinMs: 1_000,
      retryMaxMs: 60_000,
      ...options,
    };
    this.batchLimit = this.options.batchSize;
    const f = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
    if (!f) throw new TypeError('Logger: no fetch available; pass options.fetch');
    this.fetcher = (url, init) => f(url, init);
    this.store = openStore(options.persist);
    this.ready = this.store
      .then((s) => {
        this.openedStore = s;
        return s.load();
      })
      .then((old) => {
        const known = new Set(this.queue.map((e) => e.record.event_id));
        const restored = old
          .filter((r) => !known.has(r.event_id))
          .map((record) => ({ record, size: sizeOf(record) }));
        this.queue = restored.concat(this.queue);
        this.queuedBytes += restored.reduce((n, e) => n + e.size, 0);
        this.enforceBounds();
        this.schedule();
      })
      .catch((e) => this.problem({ kind: 'call', reason: `loading the persisted queue failed: ${e}` }));
    if (options.captureErrors) {
      this.uninstall.push(capture({ captured: (thrown, origin) => this.captured(thrown, origin) }));
    }
    this.watchPage();
    this.schedule();
  }

  /**
   * Logs a message; returns the event id, or undefined when the call was refused (told to
   * `onProblem`). A `log(message, { stackTrace }, 'error')` becomes a structured error.
   */
  log(
    message: string,
    params?: Record<string, Json>,
    type = 'log',
    entities?: Entity[],
  ): string | undefined {
    if (type === 'error' && params && typeof params.stackTrace === 'string') {
      const { stackTrace, ...rest } = params;
      return this.event('error', {
        message,
        params: rest,
        entities,
        success: false,
        error: errorInfo(new NamedError(message), stackTrace as string),
      });
    }
    return this.event(type, { message, params, entities });
  }

  /** Logs a thrown value as an `error` event with its stack trace and fingerprint. */
  error(thrown: unknown, params?: Record<string, Json>): string | undefined {
    const error = errorInfo(thrown);
    return this.event('error', { message: error.message, params, success: false, error });
  }

  /** Logs an event of the full model: entities, params, success, response, error. */
  event(type: string, fields: EventFields = {}): string | undefined {
    if (this.closed) {
      this.problem({ kind: 'call', reason: 'the logger is closed' });
      return undefined;
    }
    let record: AuditRecord;
    try {
      const hooked = this.defaultsHook?.() ?? {};
      const base = this.options.defaults ?? {};
      const defaults: Defaults = {
        ...base,
        ...hooked,
        entities: [...(base.entities ?? []), ...(hooked.entities ?? [])],
        params: { ...(base.params ?? {}), ...(hooked.params ?? {}) },
      };
      record = build(type, fields, defaults);
      const ua = (globalThis as { navigator?: { userAgent?: string } }).navigator?.userAgent;
      if (ua && typeof window !== 'undefined') record.client = { user_agent: ua };
    } catch (e) {
      this.problem({ kind: 'call', reason: (e as Error).message });
      return undefined;
    }
    this.enqueue([record]);
    return record.event_id;
  }

  /** Sends what waits now; resolves when the queue is empty or sending failed for now. */
  async flush(): Promise<void> {
    await this.ready;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    await this.pump(true);
  }

  /** Resolves when every record queued so far is in the store. */
  async persisted(): Promise<void> {
    await this.ready;
    await this.storing;
  }

  /** Flushes, then stops timers and hooks; later calls are refused. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.uninstall.forEach((u) => u());
    await this.persisted();
  }

  stats(): Stats {
    return {
      queued: this.queue.length,
      queuedBytes: this.queuedBytes,
      sent: this.counts.sent,
      dropped: this.counts.dropped,
      invalid: this.counts.invalid,
    };
  }

  private enqueue(records: AuditRecord[]): void {
    const entries: Entry[] = [];
    for (const record of records) {
      const size = sizeOf(record);
      if (size > this.options.maxBatchBytes) {
        this.countDrop(1, 'too-large');
        this.problem({
          kind: 'invalid',
          record,
          reason: `the record is ${size} bytes, more than maxBatchBytes (${this.options.maxBatchBytes})`,
        });
        continue;
      }
      entries.push({ record, size });
    }
    if (!entries.length) return;
    this.queue.push(...entries);
    this.queuedBytes += entries.reduce((n, e) => n + e.size, 0);
    this.persist(entries.map((e) => e.record));
    this.enforceBounds();
    this.schedule();
  }

  private persist(records: AuditRecord[]): void {
    this.storing = Promise.all([this.store, this.storing])
      .then(([s]) => s.add(records))
      .catch((e) => this.problem({ kind: 'call', reason: `persisting records failed: ${e}` }));
  }

  private unpersist(ids: string[]): void {
    if (!ids.length) return;
    this.storing = Promise.all([this.store, this.storing])
      .then(([s]) => s.remove(ids))
      .catch((e) => this.problem({ kind: 'call', reason: `updating the persisted queue failed: ${e}` }));
  }

  /** Drops the oldest records not in flight until the queue is within its bounds. */
  private enforceBounds(): void {
    const { maxQueueRecords, maxQueueBytes } = this.options;
    const dropped: string[] = [];
    for (let i = 0; i < this.queue.length && (this.queue.length > maxQueueRecords || this.queuedBytes > maxQueueBytes); ) {
      const entry = this.queue[i];
      if (this.inFlight.has(entry.record.event_id)) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      this.queuedBytes -= entry.size;
      dropped.push(entry.record.event_id);
    }
    if (dropped.length) {
      this.unpersist(dropped);
      this.countDrop(dropped.length, 'queue-full');
    }
  }

  private countDrop(count: number, reason: 'queue-full' | 'too-large'): void {
    const now = new Date().toISOString();
    this.counts.dropped += count;
    if (this.drops) {
      this.drops.count += count;
      this.drops.last = now;
    } else {
      this.drops = { count, first: now, last: now };
    }
    this.problem({ kind: 'dropped', count, reason });
  }

  /** The report of drops not yet reported, sent ahead of the next batch. */
  private dropReport(): AuditRecord | undefined {
    const d = this.drops;
    if (!d) return undefined;
    d.report ??= build('logger-records-dropped', { success: false }, this.options.defaults ?? {});
    d.report.message = `${d.count} audit records were dropped by the logger before they could be sent`;
    d.report.params = {
      dropped: d.count,
      first_dropped_at: d.first,
      last_dropped_at: d.last,
    };
    return d.report;
  }

  private schedule(delay?: number): void {
    if (this.timer || this.pumping || this.closed) return;
    const wait = delay ?? (this.queue.length >= this.options.batchSize ? 0 : this.options.lingerMs);
    if (!this.queue.length && !this.drops) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.pump(false);
    }, wait);
    (this.timer as { unref?: () => void }).unref?.();
  }

  private async currentToken(): Promise<string | undefined> {
    const t = this.options.token;
    if (typeof t !== 'function') return t;
    if (this.token && Date.now() < this.tokenExpiresAt - 30_000) return this.token;
    this.token = await t();
    this.tokenExpiresAt = expiryOf(this.token);
    return this.token;
  }

  /** The next batch: oldest records not in flight, within the count and byte limits. */
  private nextBatch(maxBytes: number): Entry[] {
    const batch: Entry[] = [];
    let bytes = 2;
    for (const entry of this.queue) {
      if (batch.length >= this.batchLimit) break;
      if (this.inFlight.has(entry.record.event_id)) continue;
      if (batch.length && bytes + entry.size + 1 > maxBytes) break;
      batch.push(entry);
      bytes += entry.size + 1;
    }
    return batch;
  }

  private async pump(once: boolean): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    let retryIn: number | undefined;
    try {
      await this.ready;
      for (;;) {
        // Up to maxConcurrentRequests batches at once; the drop report rides with the first.
        const sends: Promise<number | undefined>[] = [];
        let report = this.dropReport();
        while (sends.length < this.options.maxConcurrentRequests) {
          const batch = this.nextBatch(this.options.maxBatchBytes);
          if (!batch.length && !report) break;
          const records = batch.map((e) => e.record);
          const withReport = report;
          if (withReport) records.unshift(withReport);
          report = undefined;
          records.forEach((r) => this.inFlight.add(r.event_id));
          sends.push(
            this.sendBatch(records).then((outcome) =>
              this.settle(batch, records, outcome, withReport),
            ),
          );
        }
        if (!sends.length) break;
        const delays = (await Promise.all(sends)).filter((d): d is number => d !== undefined);
        if (delays.length) {
          retryIn = Math.max(...delays);
          break;
        }
      }
    } finally {
      this.pumping = false;
    }
    if (retryIn !== undefined) {
      this.schedule(retryIn);
    } else if (!once) {
      this.schedule();
    }
  }

  /** Sends records the pump marked in flight, and releases them whatever happens. */
  private async sendBatch(records: AuditRecord[]): Promise<Outcome> {
    try {
      let token: string | undefined;
      try {
        token = await this.currentToken();
      } catch (e) {
        return { kind: 'retry', reason: `getting a token failed: ${e}` };
      }
      return await send(this.fetcher, this.options.endpoint, token, records, false);
    } finally {
      records.forEach((r) => this.inFlight.delete(r.event_id));
    }
  }


  /** Applies an outcome; returns the delay before trying again, or undefined to go on. */
  private settle(
    batch: Entry[],
    records: AuditRecord[],
    outcome: Outcome,
    report: AuditRecord | undefined,
  ): number | undefined {
    const offset = report ? 1 : 0;
    switch (outcome.kind) {
      case 'sent':
        this.failures = 0;
        this.batchLimit = this.options.batchSize;
        this.counts.sent += batch.length;
        if (report && this.drops?.report === report) this.drops = undefined;
        this.remove(batch);
        return undefined;
      case 'invalid': {
        const bad: Entry[] = [];
        for (const [index, reason] of outcome.reasons) {
          if (report && index === 0) {
            this.drops = undefined; // a report that cannot be stored is not worth a loop
            continue;
          }
          const entry = batch[index - offset];
          if (!entry) continue;
          bad.push(entry);
          this.counts.invalid++;
          this.problem({ kind: 'invalid', record: entry.record, reason });
        }
        this.remove(bad);
        return undefined;
      }
      case 'too-large':
        if (records.length <= 1) {
          const entry = batch[0];
          if (entry) {
            this.counts.invalid++;
            this.problem({ kind: 'invalid', record: entry.record, reason: 'HTTP 413: too large' });
            this.remove([entry]);
          } else {
            this.drops = undefined;
          }
          return undefined;
        }
        this.batchLimit = Math.max(1, Math.floor(records.length / 2));
        return undefined;
      case 'unauthorized':
        this.token = undefined;
        return this.backoff(outcome.reason);
      case 'retry':
        return this.backoff(outcome.reason, outcome.afterMs);
      case 'refused':
        for (const entry of batch) {
          this.counts.invalid++;
          this.problem({ kind: 'invalid', record: entry.record, reason: outcome.reason });
        }
        this.remove(batch);
        return undefined;
    }
  }

  private remove(entries: Entry[]): void {
    if (!entries.length) return;
    const ids = new Set(entries.map((e) => e.record.event_id));
    // Batches are taken from the front, so usually they are a prefix: one splice.
    let prefix = 0;
    while (prefix < this.queue.length && ids.has(this.queue[prefix].record.event_id)) prefix++;
    let removed = this.queue.splice(0, prefix);
    if (prefix < ids.size) {
      const rest: Entry[] = [];
      const kept = this.queue.filter((e) => {
        if (!ids.has(e.record.event_id)) return true;
        rest.push(e);
        return false;
      });
      this.queue = kept;
      removed = removed.concat(rest);
    }
    this.queuedBytes -= removed.reduce((n, e) => n + e.size, 0);
    this.unpersist(removed.map((e) => e.record.event_id));
  }

  private backoff(reason: string, afterMs?: number): number {
    this.failures++;
    const exp = Math.min(this.options.retryMaxMs, this.options.retryMinMs * 2 ** Math.min(this.failures - 1, 16));
    const delay = Math.max(afterMs ?? 0, Math.round(exp * (0.5 + Math.random() * 0.5)));
    this.problem({ kind: 'send-failed', reason, retryInMs: delay });
    return delay;
  }

  private captured(thrown: unknown, origin: string): void {
    this.error(thrown, { origin });
    // A Node process is about to die: write what waits synchronously.
    if (origin === 'uncaughtException' || origin === 'unhandledRejection') {
      this.openedStore?.addNow?.(this.queue.map((e) => e.record));
    }
  }

  /** In a browser: send on page hide, and as soon as the network is back. */
  private watchPage(): void {
    const w = (globalThis as { window?: Window }).window;
    if (!w || typeof w.addEventListener !== 'function') return;
    const online = () => {
      this.failures = 0;
      if (this.timer) {
        clearTimeout(this.timer);
        this.timer = undefined;
      }
      void this.pump(false);
    };
    w.addEventListener('online', online);
    this.uninstall.push(() => w.removeEventListener('online', online));
    if (this.options.flushOnPageHide === false) return;
    const hidden = () => this.sendBeforeLeaving();
    const visibility = () => {
      if (document.visibilityState === 'hidden') hidden();
    };
    w.addEventListener('pagehide', hidden);
    document.addEventListener('visibilitychange', visibility);
    this.uninstall.push(() => {
      w.removeEventListener('pagehide', hidden);
      document.removeEventListener('visibilitychange', visibility);
    });
  }

  /**
   * The page may be gone in a moment: post what waits with `keepalive`, which outlives the
   * page. Records stay in the store until acknowledged, so if this page dies first the next
   * one sends them again, with the same ids.
   */
  private sendBeforeLeaving(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    for (;;) {
      const batch = this.nextBatch(KEEPALIVE_BYTES);
      if (!batch.length) break;
      const records = batch.map((e) => e.record);
      // The token must be at hand synchronously: a page being closed cannot wait for a fetch.
      const token = typeof this.options.token === 'string' ? this.options.token : this.token;
      records.forEach((r) => this.inFlight.add(r.event_id));
      void send(this.fetcher, this.options.endpoint, token, records, true)
        .then((outcome) => {
          records.forEach((r) => this.inFlight.delete(r.event_id));
          if (outcome.kind === 'sent') {
            this.counts.sent += batch.length;
            this.remove(batch);
          } else {
            this.schedule();
          }
        })
        .catch(() => records.forEach((r) => this.inFlight.delete(r.event_id)));
    }
  }

  private problem(p: Problem): void {
    try {
      this.options.onProblem?.(p);
    } catch {
      // the application's handler must not break logging
    }
  }
}

/** An Error carrying only a message, for `log(message, { stackTrace }, 'error')`. */
class NamedError extends Error {}

/** The `exp` of a JWT, in ms; 0 when it has none (the token is then used until refused). */
function expiryOf(token: string | undefined): number {
  if (!token) return 0;
  const part = token.split('.')[1];
  if (!part) return Number.MAX_SAFE_INTEGER;
  try {
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === 'number' ? exp * 1000 : Number.MAX_SAFE_INTEGER;
  } catch {
    return Number.MAX_SAFE_INTEGER;
  }
}

async function openStore(persist: LoggerOptions['persist']): Promise<Store> {
  if (persist && typeof persist === 'object') return persist;
  if (typeof persist === 'string') return FileStore.open(persist);
  if (persist === false) return new MemoryStore();
  if (typeof window !== 'undefined' && IndexedDbStore.available()) return new IndexedDbStore();
  return new MemoryStore();
}
