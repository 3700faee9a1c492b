/**
 * The wire shape of one event, as the ingest API's `POST /v1/events` takes it, and how the
 * logger builds it. Ids and timestamps are set when the call is made, so a retry carries the
 * same event and the pipeline can drop the duplicate.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** An entity an event touched; every entity has an activity history downstream. */
export interface Entity {
  type: string;
  id: string;
  name?: string;
}

/** A structured error: the stack trace is kept whole, the fingerprint groups occurrences. */
export interface ErrorInfo {
  code?: string;
  message?: string;
  stack_trace?: string;
  fingerprint?: string;
}

/** One event as posted. Field names are the ingest API's. */
export interface AuditRecord {
  event_id: string;
  timestamp: string;
  event_type: string;
  source?: 'CLIENT' | 'SERVER';
  service?: string;
  session_id?: string;
  user_id?: string;
  username?: string;
  tenant?: string;
  success: boolean;
  message?: string;
  entities?: Entity[];
  params?: Record<string, Json>;
  response?: Json;
  error?: ErrorInfo;
  client?: { ip?: string; user_agent?: string };
}

/** What `event()` takes besides the type. */
export interface EventFields {
  message?: string;
  entities?: Entity[];
  params?: Record<string, Json>;
  success?: boolean;
  response?: Json;
  error?: ErrorInfo;
}

/** Fields every record gets unless the call gives its own; what the defaults hook returns. */
export interface Defaults {
  service?: string;
  source?: 'CLIENT' | 'SERVER';
  session_id?: string;
  user_id?: string;
  username?: string;
  tenant?: string;
  entities?: Entity[];
  params?: Record<string, Json>;
}

const EVENT_TYPE = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Why a call could not become a record. */
export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RecordError';
  }
}

export function checkType(type: string): void {
  if (typeof type !== 'string' || !EVENT_TYPE.test(type)) {
    throw new RecordError(
      `event type ${JSON.stringify(type)} is invalid: 1 to 128 of A-Z a-z 0-9 _ . : -`,
    );
  }
}

/** A v4 UUID; `crypto.randomUUID` where the platform has it (browsers, Node 19+). */
export function uuid(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Builds a record from defaults and the call's own fields; the call wins, params merge. */
export function build(type: string, fields: EventFields, defaults: Defaults): AuditRecord {
  checkType(type);
  const record: AuditRecord = {
    event_id: uuid(),
    timestamp: new Date().toISOString(),
    event_type: type,
    success: fields.success ?? !fields.error,
  };
  for (const key of ['service', 'source', 'session_id', 'user_id', 'username', 'tenant'] as const) {
    const value = defaults[key];
    if (value !== undefined) (record as unknown as Record<string, unknown>)[key] = value;
  }
  if (fields.message !== undefined) record.message = String(fields.message);
  const entities = [...(defaults.entities ?? []), ...(fields.entities ?? [])];
  if (entities.length) record.entities = entities;
  const params = { ...(defaults.params ?? {}), ...(fields.params ?? {}) };
  if (Object.keys(params).length) record.params = params;
  if (fields.response !== undefined) record.response = fields.response;
  if (fields.error) record.error = fields.error;
  return record;
}

const encoder = new TextEncoder();

/** The size a record takes in a request body (UTF-8 JSON). */
export function sizeOf(record: AuditRecord): number {
  return encoder.encode(JSON.stringify(record)).length;
}
