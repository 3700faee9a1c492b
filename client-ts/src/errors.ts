/**
 * Thrown values as structured errors, and the hooks that log uncaught ones: `error` and
 * `unhandledrejection` in a browser, `uncaughtExceptionMonitor` in Node (which observes without
 * changing whether the process dies).
 */

import type { ErrorInfo } from './record.js';
import { fingerprint } from './fingerprint.js';

const MAX_STACK = 256 * 1024;
const MAX_MESSAGE = 64 * 1024;

/** Any thrown value (an Error, a string, anything) as the pipeline's structured error. */
export function errorInfo(thrown: unknown, stackTrace?: string): ErrorInfo {
  let name = 'Error';
  let message: string;
  let stack = stackTrace;
  let code: string | undefined;
  if (thrown instanceof Error) {
    name = thrown.name || 'Error';
    message = thrown.message;
    stack ??= thrown.stack;
    const c = (thrown as { code?: unknown }).code;
    if (typeof c === 'string' || typeof c === 'number') code = String(c);
  } else if (typeof thrown === 'string') {
    message = thrown;
  } else {
    try {
      message = JSON.stringify(thrown) ?? String(thrown);
    } catch {
      message = String(thrown);
    }
  }
  const info: ErrorInfo = {
    message: message.slice(0, MAX_MESSAGE),
    fingerprint: fingerprint(name, stack, message),
  };
  if (code !== undefined) info.code = code.slice(0, 256);
  if (stack) info.stack_trace = stack.slice(0, MAX_STACK);
  return info;
}

/** Where uncaught errors are reported to. */
export interface ErrorSink {
  captured(thrown: unknown, origin: string): void;
}

/** Installs the uncaught-error hooks of this platform; returns what removes them. */
export function capture(sink: ErrorSink): () => void {
  const g = globalThis as unknown as {
    addEventListener?: (t: string, f: (e: never) => void) => void;
    removeEventListener?: (t: string, f: (e: never) => void) => void;
    process?: { on: (t: string, f: (...a: never[]) => void) => void; off: (t: string, f: (...a: never[]) => void) => void };
    window?: unknown;
  };
  if (g.window !== undefined && typeof g.addEventListener === 'function') {
    const onError = (e: ErrorEvent) => sink.captured(e.error ?? e.message, 'window.onerror');
    const onRejection = (e: PromiseRejectionEvent) =>
      sink.captured(e.reason, 'unhandledrejection');
    g.addEventListener('error', onError as (e: never) => void);
    g.addEventListener('unhandledrejection', onRejection as (e: never) => void);
    return () => {
      g.removeEventListener?.('error', onError as (e: never) => void);
      g.removeEventListener?.('unhandledrejection', onRejection as (e: never) => void);
    };
  }
  if (g.process && typeof g.process.on === 'function') {
    // The monitor sees uncaught exceptions and, in Node's default mode, unhandled rejections
    // (origin 'unhandledRejection') before the process dies, without keeping it alive.
    const monitor = (err: unknown, origin: string) => sink.captured(err, origin);
    g.process.on('uncaughtExceptionMonitor', monitor as (...a: never[]) => void);
    return () => g.process?.off('uncaughtExceptionMonitor', monitor as (...a: never[]) => void);
  }
  return () => {};
}
