/**
 * Crash test: `zos vdisk serve` is killed with SIGKILL at a random moment
 * while a writer (a raw NBD client in this process) and a fio randwrite job
 * (another client, on another part of the disk) are writing; then restarted.
 *
 * The writer puts a distinct one-byte pattern into a fresh byte range per
 * write (ranges are unaligned and share blocks with their neighbours, so the
 * server's read-modify-write is exercised) and confirms them in three ways:
 * FLUSH after waiting for the write replies, FLUSH sent right behind the
 * writes (the server documents that a FLUSH covers the writes received before
 * it), and FUA writes. A write is durable once its FLUSH (or its own FUA
 * reply) completed.
 *
 * After every restart:
 *   - the server serves at once: no "rebuilding the block store" (it resumed
 *     from its checkpoint + log replay), the first READ is answered;
 *   - every durable write is there (qemu-io read -P, and byte for byte over
 *     the raw client); a write that was not confirmed reads as either its
 *     pattern or zeroes, byte by byte; the gaps between writes are zeroes;
 *   - what the restarted server serves becomes the baseline of the next
 *     round (it was replayed from the log, so it must survive later crashes).
 * At the end: zos log verify ok; zos vdisk export = nbdcopy of the export;
 * zos vdisk rebuild, then the same export checksum.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/tmp.ts';
import { toolsSkip } from '../helpers/tools.ts';
import { jsonLines, runAsync, sha256File, startServe, zos, type Serve } from '../helpers/zos-vdisk.ts';
import { CMD, SIMPLE_MAGIC, openExport, readSimpleReply, request, type RawClient } from '../nbd/nbd-raw-client.ts';

const MiB = 1024 * 1024;
const DISK = 128 * MiB;
/** The writer's part of the disk; fio writes the rest. */
const AREA = 96 * MiB;
const ROUNDS = 5;
const ROUND_BUDGET = Math.floor(AREA / ROUNDS);
const FLAG_FUA = 1;

interface Write {
  off: number;
  len: number;
  val: number;
  durable: boolean;
}

const rand = (n: number): number => Math.floor(Math.random() * n);

/**
 * One NBD connection with replies matched by cookie (the server may answer
 * out of order). Rejects every pending request when the connection dies.
 */
class Conn {
  readonly c: RawClient;
  #cookie = 1n;
  readonly #pending = new Map<bigint, { resolve: (error: number) => void; reject: (e: Error) => void }>();
  dead: Error | null = null;

  constructor(c: RawClient) {
    this.c = c;
    void this.#replies();
  }

  async #replies(): Promise<void> {
    try {
      for (;;) {
        const h = await this.c.read(16, 600_000);
        if (h.readUInt32BE(0) !== SIMPLE_MAGIC) throw new Error(`bad reply magic ${h.toString('hex')}`);
        const p = this.#pending.get(h.readBigUInt64BE(8));
        if (!p) throw new Error(`reply for an unknown cookie ${h.readBigUInt64BE(8)}`);
        this.#pending.delete(h.readBigUInt64BE(8));
        p.resolve(h.readUInt32BE(4));
      }
    } catch (err) {
      this.dead = err as Error;
      for (const p of this.#pending.values()) p.reject(this.dead);
      this.#pending.clear();
    }
  }

  /** Send a request; resolves with the reply's error number (0 = ok). */
  send(type: number, offset: number, length: number, data?: Buffer, flags = 0): Promise<number> {
    if (this.dead) return Promise.reject(this.dead);
    const cookie = this.#cookie++;
    const p = new Promise<number>((resolve, reject) => this.#pending.set(cookie, { resolve, reject }));
    p.catch(() => undefined); // callers that stopped waiting (the server died) must not leave an unhandled rejection
    this.c.write(request({ type, cookie, offset: BigInt(offset), length, flags }, data));
    return p;
  }
}

/** Read [offset, offset+length) over a fresh connection (simple replies, in order). */
async function readRange(port: number, name: string, offset: number, length: number): Promise<Buffer> {
  const { c } = await openExport(port, name);
  try {
    const out = Buffer.alloc(length);
    const step = 8 * MiB;
    let cookie = 1n;
    for (let at = 0; at < length; at += step) {
      const n = Math.min(step, length - at);
      c.write(request({ type: CMD.READ, cookie, offset: BigInt(offset + at), length: n }));
      const r = await readSimpleReply(c, n);
      if (r.error !== 0 || r.cookie !== cookie) throw new Error(`READ at ${offset + at}: error ${r.error}, cookie ${r.cookie}`);
      r.data.copy(out, at);
      cookie++;
    }
    return out;
  } finally {
    c.destroy();
  }
}

t.test('kill -9 during writes: every flushed write survives, the log verifies, rebuild gives the same disk', { skip: toolsSkip(['qemu-io', 'nbdcopy', 'fio']) }, async (t) => {
  const root = tempDir(t, 'zos-vdisk-crash-');
  const dataDir = join(root, 'data');
  let r = await zos(dataDir, ['init']);
  t.equal(r.code, 0, r.err);
  r = await zos(dataDir, ['--json', 'vdisk', 'create', 'crash', '--size', `${DISK}`]);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { name: 'crash', size: DISK, blockSize: 4096 });
  /** The vdisk's block-store checkpoint (view directories are named by keyed hashes; this log has one vdisk). */
  const checkpoint = (): unknown => {
    const views = join(dataDir, 'views', 'vdisk');
    const dirs = readdirSync(views).filter((d) => !d.startsWith('.'));
    const file = dirs.length === 1 ? join(views, dirs[0]!, 'checkpoint.json') : '';
    return file && existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : { views: dirs };
  };

  /** What the writer area must hold: confirmed by the last restart. */
  const baseline = Buffer.alloc(AREA);
  /** Writes since the baseline. */
  let writes: Write[] = [];
  let cursor = 0;
  const stats = { durable: 0, unconfirmed: 0, present: 0, absent: 0, partial: 0, flushes: 0, fua: 0 };

  /** Check the writer area against the baseline + this round's writes; returns what the server now serves. */
  const check = async (serve: Serve, what: string): Promise<void> => {
    const end = Math.min(AREA, cursor + 1); // no write reaches beyond
    const actual = await readRange(serve.port, 'crash', 0, end);
    const strict = Buffer.from(baseline.subarray(0, end));
    const maybe = new Uint8Array(end);
    for (const w of writes) (w.durable ? strict : maybe).fill(w.val, w.off, w.off + w.len);
    let bad = 0;
    const firstBad: string[] = [];
    for (let i = 0; i < end; i++) {
      const a = actual[i]!;
      if (a === strict[i] || (maybe[i] !== 0 && a === maybe[i])) continue;
      if (bad++ < 5) {
        const w = writes.find((x) => x.off <= i && i < x.off + x.len);
        firstBad.push(`byte ${i}: ${a}, expected ${strict[i]}${maybe[i] ? ` or ${maybe[i]}` : ''}${w ? ` (write at ${w.off}+${w.len}, ${w.durable ? 'durable' : 'unconfirmed'})` : ' (a gap)'}`);
      }
    }
    t.equal(bad, 0, `${what}: every flushed write is there, unconfirmed ones are whole or zero per byte, gaps are zero`, { firstBad });
    const after = Math.min(MiB, AREA - end);
    t.ok((await readRange(serve.port, 'crash', end, after)).equals(Buffer.alloc(after)), `${what}: nothing beyond the writes`);
    for (const w of writes) {
      if (w.durable) continue;
      stats.unconfirmed++;
      const part = actual.subarray(w.off, w.off + w.len);
      if (part.every((b) => b === w.val)) stats.present++;
      else if (part.every((b) => b === 0)) stats.absent++;
      else stats.partial++;
    }
    // qemu-io as an independent reader of the writes that must be there.
    const durable = writes.filter((w) => w.durable);
    stats.durable += durable.length;
    for (let i = 0; i < durable.length; i += 400) {
      const cmds = durable.slice(i, i + 400).flatMap((w) => ['-c', `read -q -P ${w.val} ${w.off} ${w.len}`]);
      const q = await runAsync('qemu-io', ['-f', 'raw', ...cmds, serve.uri('crash')]);
      t.equal(q.code, 0, `${what}: qemu-io ran (${q.stderr})`);
      t.notMatch(q.stdout + q.stderr, /Pattern verification failed|error/i, `${what}: qemu-io read -P verifies ${Math.min(400, durable.length - i)} flushed writes`);
    }
    actual.copy(baseline); // what the restarted server serves was replayed from the log: later crashes must keep it
    writes = [];
  };

  let serve = await startServe(t, dataDir);
  for (let round = 1; round <= ROUNDS; round++) {
    const roundEnd = round * ROUND_BUDGET;
    const { c } = await openExport(serve.port, 'crash');
    t.teardown(() => c.destroy());
    const conn = new Conn(c);
    // fio: 4k random writes at QD16 on the disk's last part, until the server dies under it.
    // --thread: one process (fio forks a process per job by default, and a SIGKILL of the parent leaves the job spinning on the dead server).
    const fio: ChildProcess = spawn('fio', ['--name=load', '--thread', '--ioengine=nbd', `--uri=${serve.uri('crash')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      `--offset=${AREA}`, `--size=${DISK - AREA}`, '--time_based', '--runtime=120', '--rate_iops=4000'], { stdio: 'ignore' });
    t.teardown(() => void fio.kill('SIGKILL'));
    const fioDone = new Promise<void>((res) => fio.on('close', () => res()));

    let stop = false;
    let firstFlush!: () => void;
    const flushed = new Promise<void>((res) => (firstFlush = res));
    const errors: string[] = [];
    let writerError: Error | null = null;
    const writer = (async () => {
      while (!stop && cursor + 24_000 < roundEnd) {
        const batch: Write[] = [];
        for (let k = 1 + rand(5); k > 0; k--) {
          const w: Write = { off: cursor + rand(2000), len: 1 + rand(20_000), val: 1 + rand(255), durable: false };
          cursor = w.off + w.len;
          batch.push(w);
          writes.push(w);
        }
        const mode = rand(3);
        try {
          if (mode === 2) {
            // FUA: each write is durable once answered.
            const replies = batch.map((w) => conn.send(CMD.WRITE, w.off, w.len, Buffer.alloc(w.len, w.val), FLAG_FUA).then((e) => {
              if (e !== 0) errors.push(`FUA write at ${w.off}: error ${e}`);
              else w.durable = true;
            }));
            await Promise.all(replies);
            stats.fua++;
          } else {
            const replies = batch.map((w) => conn.send(CMD.WRITE, w.off, w.len, Buffer.alloc(w.len, w.val)));
            if (mode === 0) for (const e of await Promise.all(replies)) if (e !== 0) errors.push(`write error ${e}`);
            const f = await conn.send(CMD.FLUSH, 0, 0);
            if (mode === 1) for (const e of await Promise.all(replies)) if (e !== 0) errors.push(`write error ${e}`);
            if (f !== 0) errors.push(`FLUSH error ${f}`);
            else for (const w of batch) w.durable = true;
            stats.flushes++;
          }
          firstFlush();
        } catch (err) {
          writerError = err as Error; // the server died under us (or, before the kill, a bug)
          return;
        }
      }
    })().finally(() => firstFlush());

    // Kill at a random moment once writing is under way.
    await flushed; 
    t.equal(writerError, null, `round ${round}: the writer is writing`);
    await new Promise((res) => setTimeout(res, 50 + rand(700)));
    const writing = cursor + 24_000 < roundEnd;
    const { signal } = await serve.kill();
    t.equal(signal, 'SIGKILL', `round ${round}: the server was killed ${writing ? 'while the writer was writing' : 'while fio was writing'}`);
    stop = true;
    await writer;
    c.destroy();
    // fio's nbd engine does not always notice the dead server (it can wait for replies forever): it was only load.
    fio.kill('SIGKILL');
    await fioDone; 
    t.same(errors, [], `round ${round}: no request failed before the kill`);
    t.match(checkpoint(), { format: 'zos-vdisk-view' }, `round ${round}: the block store has a checkpoint to resume from`);
    const v = await zos(dataDir, ['--json', 'log', 'verify']);
    t.equal(v.code, 0, `round ${round}: zos log verify right after the kill`, { output: v.out + v.err });

    serve = await startServe(t, dataDir);
    
    t.notMatch(serve.stderr(), /rebuilding the block store/, `round ${round}: the restarted server resumed from its checkpoint (${serve.startMs} ms to listening)`);
    t.ok(serve.startMs < 30_000, `round ${round}: listening after ${serve.startMs} ms`);
    const first = await readRange(serve.port, 'crash', 0, 4096);
    t.equal(first.length, 4096, `round ${round}: the first READ after the restart is answered`);
    await check(serve, `round ${round}`); 
  }
  t.comment(`writes: ${stats.durable} confirmed (${stats.flushes} flushes, ${stats.fua} FUA batches), ${stats.unconfirmed} unconfirmed at a kill: ${stats.present} present, ${stats.absent} absent, ${stats.partial} partly`);
  t.ok(stats.durable > ROUNDS * 10, `enough confirmed writes to mean something (${stats.durable})`);

  // The restarted server's view agrees with the log.
  const hist = jsonLines((await zos(dataDir, ['--json', 'vdisk', 'history', 'crash'])).out);
  const info = JSON.parse((await zos(dataDir, ['--json', 'vdisk', 'info', 'crash'])).out) as { position: number };
  t.equal(info.position, hist[hist.length - 1]!.position, 'the block store is at the last event of the stream');

  // Whole-disk checksums: nbdcopy through the server, zos vdisk export, and the same after a rebuild.
  const viaNbd = join(root, 'nbdcopy.img');
  const n = await runAsync('nbdcopy', [serve.uri('crash'), viaNbd]);
  t.equal(n.code, 0, n.stderr);
  t.ok(readFileSync(viaNbd).subarray(0, AREA).equals(baseline), 'nbdcopy reads the same writer area');
  const { code } = await serve.stop();
  t.equal(code, 0, 'serve stops cleanly after the last restart');
  t.notMatch(serve.stderr(), /rebuilding/, 'no rebuild warning at the last restart');

  const v = await zos(dataDir, ['--json', 'log', 'verify']);
  t.equal(v.code, 0, `zos log verify: ${v.out}${v.err}`);
  t.match(JSON.parse(v.out), { ok: true });

  const before = join(root, 'before.img');
  let e = await zos(dataDir, ['vdisk', 'export', 'crash', before]);
  t.equal(e.code, 0, e.err);
  const sumBefore = sha256File(before);
  t.equal(sumBefore, sha256File(viaNbd), 'zos vdisk export = what nbdcopy read over NBD');
  const rb = await zos(dataDir, ['--json', 'vdisk', 'rebuild', 'crash']);
  t.equal(rb.code, 0, rb.err);
  t.equal((JSON.parse(rb.out) as { position: number }).position, info.position, 'rebuilt up to the same position');
  const after = join(root, 'after.img');
  e = await zos(dataDir, ['vdisk', 'export', 'crash', after]);
  t.equal(e.code, 0, e.err);
  t.equal(sha256File(after), sumBefore, 'the export checksum is the same after the block store was rebuilt from the log');
});
