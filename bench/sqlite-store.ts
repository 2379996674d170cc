/**
 * The peer of the append benchmark: an event table in embedded SQLite through
 * Node's built-in node:sqlite (DatabaseSync; better-sqlite3 needs prebuilt
 * binaries or node-gyp headers, neither available here). Same engine,
 * in-process, at zos's durability: WAL with synchronous=FULL, so every commit
 * is synced before it returns. Expected-version appends are checked exactly
 * like zos's (the stream's current version must equal the expected one) and
 * UNIQUE(stream, version) backs it up.
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { statSync } from 'node:fs';

export interface SqliteEvent {
  type: string;
  data: unknown;
}

export interface SqliteAppend {
  stream: string;
  /** The stream's current version; null = the stream must not exist. */
  expected: number | null;
  events: SqliteEvent[];
}

export class VersionConflict extends Error {}

export class SqliteEventStore {
  readonly path: string;
  readonly db: DatabaseSync;
  readonly sqliteVersion: string;
  readonly journalMode: string;
  readonly #begin: StatementSync;
  readonly #commit: StatementSync;
  readonly #rollback: StatementSync;
  readonly #head: StatementSync;
  readonly #insert: StatementSync;

  constructor(path: string) {
    this.path = path;
    this.db = new DatabaseSync(path);
    this.journalMode = String((this.db.prepare('PRAGMA journal_mode=WAL').get() as { journal_mode: string }).journal_mode);
    this.db.exec('PRAGMA synchronous=FULL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS events (
        global_position INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        ts INTEGER NOT NULL
      );
      CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events (stream, version);
    `);
    this.sqliteVersion = String((this.db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v);
    this.#begin = this.db.prepare('BEGIN IMMEDIATE');
    this.#commit = this.db.prepare('COMMIT');
    this.#rollback = this.db.prepare('ROLLBACK');
    this.#head = this.db.prepare('SELECT max(version) AS v FROM events WHERE stream = ?');
    this.#insert = this.db.prepare('INSERT INTO events (stream, version, type, data, ts) VALUES (?, ?, ?, ?, ?)');
  }

  get synchronous(): number {
    return Number((this.db.prepare('PRAGMA synchronous').get() as { synchronous: number }).synchronous);
  }

  /**
   * Commit the appends in one transaction. Each append is checked against
   * its expected version; a conflicting one is skipped (its slot holds a
   * VersionConflict) without failing the others. Returns each append's new
   * stream version.
   */
  appendTx(appends: SqliteAppend[]): Array<number | VersionConflict> {
    const out: Array<number | VersionConflict> = [];
    const ts = BigInt(Date.now()) * 1_000_000n;
    this.#begin.run();
    try {
      for (const a of appends) {
        const row = this.#head.get(a.stream) as { v: number | null } | undefined;
        const current = row?.v ?? null;
        if (current !== a.expected) {
          out.push(new VersionConflict(`expected ${a.expected ?? 'no-stream'}, actual ${current ?? 'no-stream'}`));
          continue;
        }
        let v = current ?? -1;
        for (const e of a.events) {
          v++;
          this.#insert.run(a.stream, v, e.type, Buffer.from(JSON.stringify(e.data)), ts);
        }
        out.push(v);
      }
      this.#commit.run();
    } catch (err) {
      if (this.db.isTransaction) this.#rollback.run();
      throw err;
    }
    return out;
  }

  count(): number {
    return Number((this.db.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n);
  }

  /** Bytes of the database and its WAL. */
  bytes(): number {
    let n = 0;
    for (const p of [this.path, `${this.path}-wal`]) {
      try {
        n += statSync(p).size;
      } catch {
        /* absent */
      }
    }
    return n;
  }

  close(): void {
    this.db.close();
  }
}

/**
 * Group commit in front of a SqliteEventStore, as a careful application would
 * do it: appends queue up while a transaction runs, and the next transaction
 * commits every queued append (scheduled with setImmediate, as zos does).
 */
export class GroupCommitter {
  readonly #store: SqliteEventStore;
  #pending: Array<{ a: SqliteAppend; resolve: (v: number) => void; reject: (e: unknown) => void }> = [];
  #scheduled = false;
  transactions = 0;

  constructor(store: SqliteEventStore) {
    this.#store = store;
  }

  append(a: SqliteAppend): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#pending.push({ a, resolve, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#scheduled = false;
    const group = this.#pending;
    this.#pending = [];
    if (group.length === 0) return;
    let results: Array<number | VersionConflict>;
    try {
      results = this.#store.appendTx(group.map((g) => g.a));
      this.transactions++;
    } catch (err) {
      for (const g of group) g.reject(err);
      return;
    }
    group.forEach((g, i) => {
      const r = results[i];
      if (typeof r === 'number') g.resolve(r);
      else g.reject(r ?? new Error('missing result'));
    });
  }
}
