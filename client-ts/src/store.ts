/**
 * Where queued records wait while they cannot be sent: a browser's IndexedDB or a file in
 * Node, so an offline page or a killed process sends them on its next start. The queue in
 * memory is the truth while the logger runs; a store only mirrors it.
 */

import type { AuditRecord } from './record.js';

export interface Store {
  /** Records left by an earlier run, oldest first. */
  load(): Promise<AuditRecord[]>;
  add(records: AuditRecord[]): Promise<void>;
  remove(ids: string[]): Promise<void>;
  /** A synchronous add for a process about to die (uncaught exception); best effort. */
  addNow?(records: AuditRecord[]): void;
}

/** No persistence: records live as long as the logger. */
export class MemoryStore implements Store {
  async load(): Promise<AuditRecord[]> {
    return [];
  }
  async add(): Promise<void> {}
  async remove(): Promise<void> {}
}

/** IndexedDB, one object store of records keyed by event id. */
export class IndexedDbStore implements Store {
  private db: Promise<IDBDatabase>;

  constructor(name = 'audit-logger') {
    this.db = new Promise((resolve, reject) => {
      const open = indexedDB.open(name, 1);
      open.onupgradeneeded = () => open.result.createObjectStore('records', { keyPath: 'event_id' });
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  static available(): boolean {
    return typeof indexedDB !== 'undefined';
  }

  private async run(mode: IDBTransactionMode, work: (s: IDBObjectStore) => void): Promise<void> {
    const db = await this.db;
    await new Promise<void>((resolve, reject) => {
      const tx = db.transaction('records', mode);
      work(tx.objectStore('records'));
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async load(): Promise<AuditRecord[]> {
    let records: AuditRecord[] = [];
    await this.run('readonly', (s) => {
      const all = s.getAll();
      all.onsuccess = () => (records = all.result as AuditRecord[]);
    });
    return records.sort((a, b) => (a.timestamp < b.timestamp ? -1 : a.timestamp > b.timestamp ? 1 : 0));
  }

  add(records: AuditRecord[]): Promise<void> {
    return this.run('readwrite', (s) => records.forEach((r) => s.put(r)));
  }

  remove(ids: string[]): Promise<void> {
    return this.run('readwrite', (s) => ids.forEach((id) => s.delete(id)));
  }
}

/** The part of `node:fs` the file store uses (typed here so browsers need no Node types). */
interface Fs {
  promises: {
    readFile(path: string, encoding: 'utf8'): Promise<string>;
    appendFile(path: string, text: string): Promise<void>;
    writeFile(path: string, text: string): Promise<void>;
    rename(from: string, to: string): Promise<void>;
  };
  appendFileSync(path: string, text: string): void;
}

/** A module name bundlers leave alone: the file store only ever runs in Node. */
const NODE_FS = 'node:fs';

/**
 * A journal file in Node: one JSON line per added record (`{"a":…}`) or removed batch
 * (`{"d":[…]}`), replayed at start and rewritten once mostly obsolete. A torn last line (the
 * process died mid-write) is skipped.
 */
export class FileStore implements Store {
  private live = new Map<string, AuditRecord>();
  private written = 0;
  private chain: Promise<void> = Promise.resolve();
  private fs!: Fs;

  private constructor(private readonly path: string) {}

  static async open(path: string): Promise<FileStore> {
    const store = new FileStore(path);
    store.fs = (await import(/* @vite-ignore */ NODE_FS)) as Fs;
    return store;
  }

  async load(): Promise<AuditRecord[]> {
    let text = '';
    try {
      text = await this.fs.promises.readFile(this.path, 'utf8');
    } catch (e) {
      if ((e as { code?: string }).code !== 'ENOENT') throw e;
    }
    for (const line of text.split('\n')) {
      if (!line) continue;
      try {
        const entry = JSON.parse(line) as { a?: AuditRecord; d?: string[] };
        if (entry.a) this.live.set(entry.a.event_id, entry.a);
        for (const id of entry.d ?? []) this.live.delete(id);
      } catch {
        // torn line
      }
    }
    // Through the chain, so an append made meanwhile lands after the rewrite, not in the
    // file the rewrite replaces.
    this.chain = this.chain.then(() => this.compact());
    await this.chain;
    return [...this.live.values()];
  }

  private append(lines: string[]): Promise<void> {
    this.written += lines.length;
    const text = lines.join('\n') + '\n';
    this.chain = this.chain
      .catch(() => undefined)
      .then(() => this.fs.promises.appendFile(this.path, text));
    if (this.written > 2 * this.live.size + 1000) this.chain = this.chain.then(() => this.compact());
    return this.chain;
  }

  private async compact(): Promise<void> {
    const tmp = `${this.path}.tmp`;
    const text = [...this.live.values()].map((r) => JSON.stringify({ a: r }) + '\n').join('');
    await this.fs.promises.writeFile(tmp, text);
    await this.fs.promises.rename(tmp, this.path);
    this.written = this.live.size;
  }

  add(records: AuditRecord[]): Promise<void> {
    for (const r of records) this.live.set(r.event_id, r);
    return this.append(records.map((r) => JSON.stringify({ a: r })));
  }

  remove(ids: string[]): Promise<void> {
    for (const id of ids) this.live.delete(id);
    return this.append([JSON.stringify({ d: ids })]);
  }

  addNow(records: AuditRecord[]): void {
    for (const r of records) this.live.set(r.event_id, r);
    try {
      this.fs.appendFileSync(this.path, records.map((r) => JSON.stringify({ a: r }) + '\n').join(''));
    } catch {
      // a dying process cannot do more
    }
  }
}
