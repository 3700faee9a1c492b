/**
 * `@audit-pipeline/logger`: audit events from browsers and Node to the audit pipeline's
 * ingest API.
 *
 * ```ts
 * const logger = new Logger({ endpoint: 'https://audit.example.com/v1/events', token: getToken,
 *                             captureErrors: true });
 * logger.log('report opened', { reportId: 'r1' });
 * logger.event('query-created', { entities: [{ type: 'query', id: 'q1' }] });
 * try { … } catch (e) { logger.error(e); }
 * ```
 */

export { Logger } from './logger.js';
export type { DefaultsHook, LoggerOptions, Problem, Stats } from './logger.js';
export type { AuditRecord, Defaults, Entity, ErrorInfo, EventFields, Json } from './record.js';
export { RecordError } from './record.js';
export { errorInfo } from './errors.js';
export { fingerprint } from './fingerprint.js';
export { FileStore, IndexedDbStore, MemoryStore } from './store.js';
export type { Store } from './store.js';
