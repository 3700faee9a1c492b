/**
 * Error fingerprints: one value for every occurrence of the same error, so errors can be
 * grouped (`sink-clickhouse/queries/errors_by_fingerprint.sql`). The error's name and its top
 * stack frames count; line and column numbers, query strings, origins and the message do not,
 * since they change between builds, hosts and occurrences while the error stays the same.
 */

const MAX_FRAMES = 8;

/** The frames of a V8 (`    at f (file:1:2)`) or Firefox/Safari (`f@file:1:2`) stack. */
function frames(stack: string): string[] {
  return stack
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('at ') || line.includes('@'))
    .slice(0, MAX_FRAMES)
    .map((line) =>
      line
        .replace(/^at\s+/, '')
        .replace(/[a-z][a-z0-9+.-]*:\/\/[^/\s)]*/gi, '') // origin
        .replace(/\?[^:\s)]*/g, '') // query string
        .replace(/:\d+(:\d+)?(?=\)?$)/, '') // line and column
        .replace(/\s+/g, ' '),
    );
}

/** 64-bit FNV-1a over UTF-16 units, as 16 hex digits: stable across browsers and Node. */
function fnv1a64(text: string): string {
  let hash = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n;
  const mask = 0xffffffffffffffffn;
  for (let i = 0; i < text.length; i++) {
    hash ^= BigInt(text.charCodeAt(i));
    hash = (hash * prime) & mask;
  }
  return hash.toString(16).padStart(16, '0');
}

/** The fingerprint of an error of this name with this stack (or message, without frames). */
export function fingerprint(name: string, stack: string | undefined, message?: string): string {
  const top = stack ? frames(stack) : [];
  const basis = top.length ? top.join('\n') : (message ?? '');
  return fnv1a64(`${name}\n${basis}`);
}
