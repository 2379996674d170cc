/**
 * Cross-process writer lock for one data directory.
 *
 * Linux abstract-namespace Unix sockets are a mutex the kernel releases when
 * the holder dies, even by kill -9: binding the name succeeds for exactly one
 * process at a time. The name is derived from the data directory's device and
 * inode, so every path to the same directory maps to the same lock. Scope: one
 * network namespace (document: processes sharing a data directory must share
 * a network namespace, which is the default).
 */
import { connect, createServer, type Server } from 'node:net';
import { statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { ZosError } from '../errors.ts';

export class WriterLock {
  readonly #name: string;
  #server: Server | null = null;

  constructor(dataDir: string) {
    const st = statSync(dataDir);
    const id = createHash('sha256').update(`${st.dev}:${st.ino}`).digest('hex').slice(0, 32);
    this.#name = `\0zos-writer-${id}`;
  }

  #contended = false;

  get held(): boolean {
    return this.#server !== null;
  }

  /** True once another process has asked for the lock while we held it. */
  get contended(): boolean {
    return this.#contended;
  }

  /** Tell the holder that we are waiting (it lets go at its next chance). */
  #knock(): void {
    const sock = connect({ path: this.#name });
    sock.on('error', () => undefined);
    sock.on('connect', () => sock.destroy());
    sock.unref();
  }

  #tryListen(): Promise<Server | null> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      server.unref();
      const onError = (err: NodeJS.ErrnoException): void => {
        server.close();
        if (err.code === 'EADDRINUSE') resolve(null);
        else reject(err);
      };
      server.once('error', onError);
      server.listen({ path: this.#name, exclusive: true }, () => {
        server.off('error', onError);
        server.on('error', () => undefined);
        // A connection is another process knocking: it wants the lock.
        server.on('connection', (sock) => {
          this.#contended = true;
          sock.destroy();
        });
        resolve(server);
      });
    });
  }

  async acquire(timeoutMs = 30_000): Promise<void> {
    if (this.#server) throw new Error('writer lock already held by this instance');
    const deadline = Date.now() + timeoutMs;
    let attempt = 0;
    for (;;) {
      const server = await this.#tryListen();
      if (server) {
        this.#server = server;
        this.#contended = false;
        return;
      }
      if (attempt % 8 === 0) this.#knock();
      if (Date.now() > deadline) {
        throw new ZosError('TLOG_LOCK_TIMEOUT', `another zos process has held the writer lock for ${timeoutMs} ms; check for a stuck process and retry`, {
          retriable: true,
        });
      }
      attempt++;
      if (attempt < 20) await new Promise((r) => setImmediate(r));
      else await new Promise((r) => setTimeout(r, Math.min(2, 1 + (attempt >> 5))));
    }
  }

  async release(): Promise<void> {
    const s = this.#server;
    this.#server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}
