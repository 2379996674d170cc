/**
 * Rollback, snapshots, clones, export and history of vdisks, through the
 * manager API and real NBD clients (qemu-io, nbdcopy).
 *
 * Expected contents come from an in-test model of the bytes written (never
 * from the vdisk's own history index), and are checked both over NBD and in
 * images written by VdiskManager.export.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { Tlog, initDataDir, isZosError } from '../../tlog/index.ts';
import { NbdServer } from '../../nbd/index.ts';
import { VdiskManager, type HistoryEntry, type Target } from '../../vdisk/index.ts';
import { tempDir, waitFor } from '../helpers/tmp.ts';
import { toolsSkip } from '../helpers/tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const skip = toolsSkip(['qemu-io', 'nbdcopy']);

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a client without blocking this process's event loop (the server lives here). */
function runAsync(cmd: string, args: string[], timeoutMs = 120_000): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', reject);
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** qemu-io (writeback cache, so that only flush / write -f are durability points); every command must succeed. */
async function qemuIo(t: Test, uri: string, cmds: string[]): Promise<void> {
  const r = await runAsync('qemu-io', ['-f', 'raw', '-t', 'writeback', ...cmds.flatMap((c) => ['-c', c]), uri]);
  t.equal(r.code, 0, `qemu-io exits 0: ${r.stderr}`);
  t.notMatch(r.stdout + r.stderr, /Pattern verification failed|failed|error/i, `qemu-io: ${cmds.join('; ')}`);
}

/** An interactive qemu-io: one NBD connection kept open across commands. */
class QemuIoSession {
  readonly #p: ChildProcessWithoutNullStreams;
  #out = '';
  readonly exited: Promise<number | null>;

  constructor(uri: string) {
    this.#p = spawn('qemu-io', ['-f', 'raw', '-t', 'writeback', uri]);
    this.#p.stdout.on('data', (d: Buffer) => (this.#out += d.toString()));
    this.#p.stderr.on('data', (d: Buffer) => (this.#out += d.toString()));
    this.exited = new Promise((resolve) => this.#p.on('exit', resolve));
  }

  async cmd(c: string, timeoutMs = 30_000): Promise<string> {
    await this.#prompt(0, timeoutMs);
    const from = this.#out.length;
    this.#p.stdin.write(`${c}\n`);
    return this.#prompt(from, timeoutMs);
  }

  async #prompt(from: number, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#out.slice(from).endsWith('qemu-io> ')) {
      if (Date.now() > deadline) throw new Error(`qemu-io gave no prompt in ${timeoutMs} ms; output so far: ${this.#out.slice(from)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.#out.slice(from, -'qemu-io> '.length);
  }

  kill(): void {
    this.#p.kill('SIGKILL');
  }
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

interface Env {
  dataDir: string;
  log: Tlog;
  m: VdiskManager;
  server: NbdServer;
  port: number;
  uri: (name: string) => string;
  scratch: string;
  warnings: string[];
  /** The vdisk's content as a real client reads it (nbdcopy to a file). */
  nbdImage: (name: string) => Promise<Buffer>;
  /** The vdisk's content at a target, through VdiskManager.export. */
  exported: (name: string, target?: Target) => Promise<Buffer>;
  history: (name: string) => Promise<HistoryEntry[]>;
}

async function setup(t: Test): Promise<Env> {
  const dataDir = tempDir(t);
  initDataDir(dataDir);
  const log = await Tlog.open({ dataDir });
  const warnings: string[] = [];
  const m = await VdiskManager.open(log, { onWarning: (w) => warnings.push(w) });
  const server = new NbdServer({ exports: m });
  m.onDisconnect = (n) => server.disconnectExport(n);
  const { port } = await server.listen(0);
  t.teardown(async () => {
    await server.close();
    await m.close();
    await log.close();
  });
  const scratch = tempDir(t);
  const uri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;
  let n = 0;
  return {
    dataDir,
    log,
    m,
    server,
    port,
    uri,
    scratch,
    warnings,
    nbdImage: async (name) => {
      const f = join(scratch, `nbd-${n++}.img`);
      const r = await runAsync('nbdcopy', [uri(name), f]);
      if (r.code !== 0) throw new Error(`nbdcopy from ${name} failed: ${r.stderr}`);
      return readFileSync(f);
    },
    exported: async (name, target = 'now') => {
      const f = join(scratch, `export-${n++}.img`);
      await m.export(name, f, target);
      return readFileSync(f);
    },
    history: async (name) => {
      const out: HistoryEntry[] = [];
      for await (const h of m.history(name)) out.push(h);
      return out;
    },
  };
}

async function rejectsWith(t: Test, p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  try {
    await p;
    t.fail(`expected ${code}, but it succeeded`);
  } catch (err) {
    t.ok(isZosError(err, code as never), `fails with ${code} (got ${(err as Error).message})`);
    if (message) t.match((err as Error).message, message);
  }
}

/** The disk image a sequence of qemu-io-style fills and zeroes produces. */
function image(size: number, ops: Array<[number | 'z', number, number]>, base?: Buffer): Buffer {
  const b = base ? Buffer.from(base) : Buffer.alloc(size);
  for (const [p, off, len] of ops) b.fill(p === 'z' ? 0 : p, off, off + len);
  return b;
}

const same = (t: Test, actual: Buffer, expected: Buffer, what: string): void => {
  t.equal(actual.length, expected.length, `${what}: size`);
  t.ok(actual.equals(expected), `${what}: content (${sha(actual)} vs expected ${sha(expected)})`);
};

t.test('rollback to a snapshot, a position, a time and now, written and read by real clients', { skip }, async (t) => {
  const e = await setup(t);
  const SIZE = 16 * MiB;
  await e.m.create('vm1', SIZE);
  const A: Array<[number | 'z', number, number]> = [[0xa1, 0, MiB], [0xa2, 5000, 300], [0xa3, 3 * MiB, 64 * KiB]];
  await qemuIo(t, e.uri('vm1'), ['write -P 0xa1 0 1M', 'write -P 0xa2 5000 300', 'write -P 0xa3 3M 64k', 'flush']);
  const snapA = await e.m.snapshot('vm1', 'after-A');
  const imgA = image(SIZE, A);

  const B: Array<[number | 'z', number, number]> = [[0xb1, 512 * KiB, MiB], ['z', 0, 64 * KiB], ['z', 3 * MiB, 64 * KiB], [0xb2, 10 * MiB, 4 * KiB]];
  await qemuIo(t, e.uri('vm1'), ['write -P 0xb1 512k 1M', 'write -z 0 64k', 'discard 3M 64k', 'write -P 0xb2 10M 4k', 'flush']);
  const imgB = image(SIZE, B, imgA);
  const hB = (await e.history('vm1')).at(-1)!;

  await qemuIo(t, e.uri('vm1'), ['write -P 0xc1 0 4M', 'write -P 0xc2 15M 1M', 'flush']);
  const imgC = image(SIZE, [[0xc1, 0, 4 * MiB], [0xc2, 15 * MiB, MiB]], imgB);
  const hC = (await e.history('vm1')).at(-1)!;
  same(t, await e.nbdImage('vm1'), imgC, 'before any rollback');

  let r = await e.m.rollback('vm1', { snapshot: 'after-A' });
  t.equal(r.toPosition, snapA, 'the snapshot resolves to its position');
  t.ok(r.blocks > 0, `${r.blocks} blocks changed`);
  same(t, await e.nbdImage('vm1'), imgA, 'rolled back to the snapshot (over NBD)');
  same(t, await e.exported('vm1'), imgA, 'rolled back to the snapshot (export)');
  await qemuIo(t, e.uri('vm1'), ['read -P 0xa1 0 5000', 'read -P 0xa2 5000 300', 'read -P 0xa1 5300 1043276', 'read -P 0 1M 2M', 'read -P 0xa3 3M 64k', 'read -P 0 15M 1M']);

  r = await e.m.rollback('vm1', { position: hB.position });
  t.equal(r.toPosition, hB.position);
  same(t, await e.nbdImage('vm1'), imgB, 'rolled forward to a position after B');

  r = await e.m.rollback('vm1', { time: hC.timeNs });
  t.equal(r.toPosition, hC.position, 'a time resolves to the last event committed at or before it');
  same(t, await e.nbdImage('vm1'), imgC, 'rolled to the time of C');

  const before = (await e.history('vm1')).length;
  r = await e.m.rollback('vm1', 'now');
  t.equal(r.blocks, 0, "a rollback to 'now' changes no block");
  t.equal((await e.history('vm1')).length, before + 1, 'it is still recorded');
  same(t, await e.exported('vm1'), imgC, "content unchanged after rolling back to 'now'");

  // Times between events: the state of the last event at or before that time.
  const hist = await e.history('vm1');
  const snapEvent = hist.find((h) => h.type === 'VdiskSnapshotted')!;
  const next = hist[hist.indexOf(snapEvent) + 1]!;
  t.ok(next.timeNs > snapEvent.timeNs + 1n, 'the next event is later than the snapshot');
  r = await e.m.rollback('vm1', { time: next.timeNs - 1n });
  t.equal(r.toPosition, snapEvent.position, 'a time just before the next event resolves to the snapshot');
  same(t, await e.nbdImage('vm1'), imgA, 'rolled back to a time between two events');
  t.same(e.warnings, []);
});

t.test('rolling back to a position after a rollback undoes it; rollbacks of rollbacks', async (t) => {
  const e = await setup(t);
  await e.m.create('d', 64 * KiB, 512);
  const vd = await e.m.get('d');
  const last = async (): Promise<bigint> => (await e.history('d')).at(-1)!.position;
  const fill = (b: number): Buffer => Buffer.alloc(512, b);

  await vd.write(0, fill(1), false);
  await vd.flush();
  const p1 = await last();
  await vd.write(0, fill(2), false);
  await vd.write(512, fill(2), false);
  await vd.flush();
  const p2 = await last();
  await vd.write(1024, fill(3), false);
  await vd.flush();
  const p3 = await last();

  const at = async (): Promise<number[]> => [...(await vd.read(0, 1536))].filter((_, i) => i % 512 === 0);
  t.same(await at(), [2, 2, 3], 'state at p3');
  const r1 = await e.m.rollback('d', { position: p1 });
  t.same(await at(), [1, 0, 0], 'rolled back to p1');
  await e.m.rollback('d', { position: r1.position - 1n });
  t.same(await at(), [2, 2, 3], 'rolling back to just before the rollback undoes it');
  const r3 = await e.m.rollback('d', { position: r1.position });
  t.same(await at(), [1, 0, 0], 'rolling back to the rollback itself redoes it');
  await vd.write(1536, fill(4), false);
  await vd.flush();
  const p4 = await last();
  t.same([...(await vd.read(0, 2048))].filter((_, i) => i % 512 === 0), [1, 0, 0, 4], 'a write after a rollback lands on the rolled-back state');
  await e.m.rollback('d', { position: p2 });
  t.same([...(await vd.read(0, 2048))].filter((_, i) => i % 512 === 0), [2, 2, 0, 0], 'back to p2, across two rollbacks');
  await e.m.rollback('d', { position: p4 });
  t.same([...(await vd.read(0, 2048))].filter((_, i) => i % 512 === 0), [1, 0, 0, 4], 'forward to p4 (after a rollback and a write)');
  t.ok(r3.position > r1.position && p3 < r1.position);
  // The same states, exported at those positions.
  const blocksOf = (img: Buffer): number[] => [...img].filter((_, i) => i % 512 === 0).slice(0, 4);
  t.same(blocksOf(await e.exported('d', { position: p3 })), [2, 2, 3, 0]);
  t.same(blocksOf(await e.exported('d', { position: r1.position })), [1, 0, 0, 0]);
  t.same(blocksOf(await e.exported('d', { position: p4 })), [1, 0, 0, 4]);
});

t.test('a rollback of an open export disconnects its clients; reconnecting clients see the rolled-back content', { skip }, async (t) => {
  const e = await setup(t);
  await e.m.create('w', 8 * MiB);
  await e.m.create('other', 8 * MiB);
  await qemuIo(t, e.uri('w'), ['write -P 0x11 0 1M', 'flush']);
  await e.m.snapshot('w', 's1');

  const onW = new QemuIoSession(e.uri('w'));
  const onW2 = new QemuIoSession(e.uri('w'));
  const onOther = new QemuIoSession(e.uri('other'));
  t.teardown(() => {
    onW.kill();
    onW2.kill();
    onOther.kill();
  });
  t.match(await onW.cmd('write -P 0x22 0 64k'), /wrote 65536\/65536/);
  // Not flushed: it is in the vdisk, but the client never asked for durability.
  t.match(await onW2.cmd('read -P 0x22 0 64k'), /read 65536\/65536/, 'a second client sees the first one\'s write');
  t.match(await onOther.cmd('write -P 0x33 0 64k'), /wrote 65536\/65536/);
  t.equal(e.server.connections, 3);

  const r = await e.m.rollback('w', { snapshot: 's1' });
  t.ok(r.blocks >= 16, `${r.blocks} blocks rolled back`);
  await waitFor(() => e.server.connections === 1, 10_000, "only the other vdisk's client to stay connected");
  t.equal(e.server.connections, 1, "only the other vdisk's client is still connected");
  t.match(await onW.cmd('read 0 4k'), /read failed|error/i, 'the old connection was dropped');
  t.match(await onW2.cmd('read 0 4k'), /read failed|error/i, 'every old connection was dropped');
  t.match(await onOther.cmd('read -P 0x33 0 64k'), /read 65536\/65536/, 'clients of other vdisks are untouched');

  await qemuIo(t, e.uri('w'), ['read -P 0x11 0 1M', 'read -P 0 1M 1M']);
  same(t, await e.nbdImage('w'), image(8 * MiB, [[0x11, 0, MiB]]), 'a reconnecting client reads the rolled-back content');

  // The dropped client's unflushed write was logged before the rollback: rolling forward restores it.
  await e.m.rollback('w', { position: r.position - 1n });
  same(t, await e.nbdImage('w'), image(8 * MiB, [[0x11, 0, MiB], [0x22, 0, 64 * KiB]]), 'rolling forward brings back the write made just before the rollback');
});

t.test('a rollback while three fio jobs write at QD32: they are cut off, and no write lands after the rollback', { skip: toolsSkip(['fio']) }, async (t) => {
  const e = await setup(t);
  const SIZE = 32 * MiB;
  await e.m.create('busy', SIZE);
  const vd = await e.m.get('busy');
  await vd.write(0, Buffer.alloc(SIZE, 0x11), true);
  await e.m.snapshot('busy', 'calm');
  const snapPos = (await e.history('busy')).at(-1)!.position;

  const jobs = [0, 1, 2].map((j) =>
    runAsync('fio', ['--name=storm', '--ioengine=nbd', `--uri=${e.uri('busy')}`, '--rw=randwrite', '--bs=4k', '--iodepth=32', `--size=${SIZE}`, '--time_based', '--runtime=60', `--randseed=${j + 1}`], 90_000),
  );
  await waitFor(() => e.server.connections === 3, 30_000, 'three fio connections');
  // Wait until each has written something (a few batches logged after the snapshot).
  const writtenSince = async (): Promise<number> => (await e.history('busy')).filter((h) => h.position > snapPos && h.type === 'VdiskBlocksWritten').length;
  await waitFor(async () => (await writtenSince()) >= 5, 30_000, 'fio writes to reach the log');

  const r = await e.m.rollback('busy', { snapshot: 'calm' });
  const results = await Promise.all(jobs);
  for (const [j, res] of results.entries()) t.not(res.code, 0, `fio job ${j} lost its connection (${res.stderr.split('\n')[0]})`);
  const after = (await e.history('busy')).filter((h) => h.position > r.position);
  t.same(after.map((h) => h.type), [], 'nothing was appended after the rollback');
  same(t, await e.exported('busy'), Buffer.alloc(SIZE, 0x11), 'the content is the snapshot');
  // The writes fio made before the rollback are all in the history: rolling forward brings back a different disk.
  await e.m.rollback('busy', { position: r.position - 1n });
  t.not(sha(await e.exported('busy')), sha(Buffer.alloc(SIZE, 0x11)), "rolling forward restores fio's writes");
});

t.test('invalid rollbacks are refused, change nothing, and append nothing', { skip }, async (t) => {
  const e = await setup(t);
  await e.m.create('first', MiB);
  const headBefore = await e.log.headPosition();
  await e.m.create('v', 4 * MiB);
  await qemuIo(t, e.uri('v'), ['write -P 0x5a 0 64k', 'flush']);
  const hist = await e.history('v');
  const created = hist[0]!;
  const content = await e.exported('v');

  await rejectsWith(t, e.m.rollback('v', { position: created.position - 1n }), 'VDISK_INVALID', /did not exist at position/);
  await rejectsWith(t, e.m.rollback('v', { position: headBefore - 1n }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.rollback('v', { position: 0n }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.rollback('v', { time: created.timeNs - 1n }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.rollback('v', { time: 0n }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.rollback('v', { position: 1n << 40n }), 'VDISK_INVALID', /not in the log/);
  await rejectsWith(t, e.m.rollback('v', { position: -1n }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.rollback('v', { snapshot: 'never-taken' }), 'VDISK_NOT_FOUND', /no snapshot named "never-taken"/);
  await rejectsWith(t, e.m.rollback('nope', 'now'), 'VDISK_NOT_FOUND');
  await rejectsWith(t, e.m.rollback('bad name!', 'now'), 'VDISK_INVALID');

  t.same((await e.history('v')).map((h) => h.position), hist.map((h) => h.position), 'nothing was appended');
  same(t, await e.exported('v'), content, 'content unchanged');
  // The creation itself is a valid target: an empty disk.
  await e.m.rollback('v', { position: created.position });
  same(t, await e.nbdImage('v'), Buffer.alloc(4 * MiB), 'rolled back to the creation: all zeroes');
});

t.test('a refused rollback leaves the clients of the export connected', { skip }, async (t) => {
  const e = await setup(t);
  await e.m.create('v', 4 * MiB);
  const q = new QemuIoSession(e.uri('v'));
  t.teardown(() => q.kill());
  t.match(await q.cmd('write -P 0x77 0 4k'), /wrote 4096\/4096/);
  await rejectsWith(t, e.m.rollback('v', { snapshot: 'typo' }), 'VDISK_NOT_FOUND');
  await rejectsWith(t, e.m.rollback('v', { position: 0n }), 'VDISK_INVALID');
  t.match(await q.cmd('read -P 0x77 0 4k'), /read 4096\/4096/, 'the client can still read');
  t.equal(e.server.connections, 1, 'it is still connected');
});

t.test('history lists every event with its fields', async (t) => {
  const e = await setup(t);
  await e.m.create('h', MiB, 1024);
  const vd = await e.m.get('h');
  await vd.write(0, Buffer.alloc(3 * 1024, 7), false);
  await vd.writeZeroes(8192, 2048, false);
  await vd.flush();
  await vd.write(4096, Buffer.alloc(1024, 8), true); // FUA
  const snap = await e.m.snapshot('h', 'first snapshot');
  await vd.trim(0, 1024, false);
  await vd.flush();
  const rb = await e.m.rollback('h', { snapshot: 'first snapshot' });
  await e.m.clone('h', 'h2');

  const h = await e.history('h');
  t.same(h.map((x) => x.type), ['VdiskCreated', 'VdiskBlocksWritten', 'VdiskBlocksWritten', 'VdiskSnapshotted', 'VdiskBlocksWritten', 'VdiskRolledBack']);
  t.same(h.map((x) => x.version), [0n, 1n, 2n, 3n, 4n, 5n], 'versions are dense from 0');
  for (let i = 1; i < h.length; i++) {
    t.ok(h[i]!.position > h[i - 1]!.position, `positions increase (${h[i - 1]!.position} < ${h[i]!.position})`);
    t.ok(h[i]!.timeNs >= h[i - 1]!.timeNs, 'commit times do not go backwards');
  }
  t.match(h[0], { size: MiB, blockSize: 1024 });
  t.match(h[1], { blocks: 3, zeroed: 2, flushed: true }, 'three data blocks and two zeroed ones, in one batch closed by the FLUSH');
  t.match(h[2], { blocks: 1, zeroed: 0, flushed: true }, 'the FUA write');
  t.match(h[3], { snapshot: 'first snapshot', position: snap });
  t.match(h[4], { blocks: 0, zeroed: 1, flushed: true }, 'a trim travels as a zeroed range');
  t.match(h[5], { toPosition: snap, snapshot: 'first snapshot', position: rb.position });
  const h2 = await e.history('h2');
  t.same(h2.map((x) => x.type), ['VdiskCloned']);
  t.match(h2[0], { source: 'h', atPosition: rb.position, size: MiB, blockSize: 1024 });
  await rejectsWith(t, (async () => {
    for await (const _ of e.m.history('never-created')) void _;
  })(), 'VDISK_NOT_FOUND');
});

t.test('a batch no client flushed is not marked flushed, even when an operation drains it', async (t) => {
  const e = await setup(t);
  await e.m.create('f', MiB);
  const vd = await e.m.get('f');
  // Written, not flushed, and drained right away by a snapshot (and by history()).
  await vd.write(0, Buffer.alloc(4096, 1), false);
  await e.m.snapshot('f', 's');
  await vd.write(4096, Buffer.alloc(4096, 2), false);
  const h = await e.history('f');
  const writes = h.filter((x) => x.type === 'VdiskBlocksWritten');
  t.equal(writes.length, 2);
  t.same(writes.map((x) => x.flushed), [false, false], 'flushed means a FLUSH or FUA closed the batch (docs: "a point the client asked to be durable")');
});

t.test('a clone at a past position has the source\'s content then, and is independent afterwards', { skip }, async (t) => {
  const e = await setup(t);
  const SIZE = 8 * MiB;
  await e.m.create('base', SIZE);
  await qemuIo(t, e.uri('base'), ['write -P 0x01 0 2M', 'flush']);
  const p1 = (await e.history('base')).at(-1)!.position;
  await qemuIo(t, e.uri('base'), ['write -P 0x02 1M 2M', 'write -z 0 4k', 'flush']);
  const img1 = image(SIZE, [[0x01, 0, 2 * MiB]]);
  const img2 = image(SIZE, [[0x02, MiB, 2 * MiB], ['z', 0, 4 * KiB]], img1);

  const info = await e.m.clone('base', 'past', { position: p1 });
  t.equal(info.size, SIZE);
  t.equal(info.blockSize, 4096);
  same(t, await e.nbdImage('past'), img1, 'the clone has the source at p1');
  const now = await e.m.clone('base', 'now-clone');
  same(t, await e.nbdImage('now-clone'), img2, "a clone at 'now' has the current content");
  await e.m.snapshot('base', 'snap');
  await qemuIo(t, e.uri('base'), ['write -P 0x03 6M 1M', 'flush']);
  await e.m.clone('base', 'from-snap', { snapshot: 'snap' });
  same(t, await e.nbdImage('from-snap'), img2, 'a clone at a snapshot');
  t.ok(now.createdPosition > p1);

  // Independent: writes to either side stay there.
  await qemuIo(t, e.uri('past'), ['write -P 0x44 0 1M', 'write -P 0x45 7M 1M', 'flush']);
  await qemuIo(t, e.uri('base'), ['write -P 0x55 2M 1M', 'flush']);
  const base = image(SIZE, [[0x03, 6 * MiB, MiB], [0x55, 2 * MiB, MiB]], img2);
  same(t, await e.nbdImage('base'), base, 'the source did not see the clone\'s writes');
  same(t, await e.nbdImage('past'), image(SIZE, [[0x44, 0, MiB], [0x45, 7 * MiB, MiB]], img1), 'the clone did not see the source\'s writes');
  same(t, await e.nbdImage('from-snap'), img2, 'nor did the other clone');

  // Rolling the source back does not move its clones, and a clone rolls back to its own creation.
  await e.m.rollback('base', { position: p1 });
  same(t, await e.nbdImage('now-clone'), img2, 'a source rollback leaves clones alone');
  await e.m.rollback('past', { position: info.createdPosition });
  same(t, await e.nbdImage('past'), img1, "a clone's rollback to its creation gives the cloned content");
  await rejectsWith(t, e.m.rollback('past', { position: p1 }), 'VDISK_INVALID', /did not exist/);
  // A clone of a clone.
  await e.m.clone('past', 'grandchild');
  same(t, await e.nbdImage('grandchild'), img1, 'a clone of a clone');

  await rejectsWith(t, e.m.clone('base', 'past'), 'VDISK_EXISTS');
  await rejectsWith(t, e.m.clone('base', 'early', { position: (await e.history('base'))[0]!.position - 1n }), 'VDISK_INVALID', /did not exist at position/);
  await rejectsWith(t, e.m.clone('missing', 'x'), 'VDISK_NOT_FOUND');
  await rejectsWith(t, e.m.clone('base', 'bad/name'), 'VDISK_INVALID');
  t.same(e.warnings, []);
});

t.test('a clone outlives its source: deleted, re-created, every view rebuilt', async (t) => {
  const e = await setup(t);
  await e.m.create('src', 256 * KiB, 4096);
  const src = await e.m.get('src');
  const content = randomBytes(128 * KiB);
  await src.write(0, content, false);
  await src.flush();
  const p = (await e.history('src')).at(-1)!.position;
  await src.write(0, Buffer.alloc(64 * KiB, 0xee), true);
  await e.m.clone('src', 'kid', { position: p });
  const expected = Buffer.concat([content, Buffer.alloc(128 * KiB)]);
  same(t, await e.exported('kid'), expected, 'clone content');

  await e.m.delete('src');
  await e.m.create('src', 512 * KiB, 512); // another geometry, same name
  await (await e.m.get('src')).write(0, Buffer.alloc(512 * KiB, 0x99), true);
  await e.m.rebuild('kid');
  same(t, await e.exported('kid'), expected, 'rebuilt after its source was deleted and re-created: replays the old incarnation');

  await e.m.close();
  await e.log.close();
  rmSync(e.log.viewDir('vdisk'), { recursive: true, force: true });
  const log = await Tlog.open({ dataDir: e.dataDir });
  const m = await VdiskManager.open(log);
  t.teardown(async () => {
    await m.close();
    await log.close();
  });
  const f = join(e.scratch, 'kid-after.img');
  await m.export('kid', f);
  same(t, readFileSync(f), expected, 'and after every view was deleted');
  await m.export('src', f);
  same(t, readFileSync(f), Buffer.alloc(512 * KiB, 0x99), 'the new source is its own disk');
});

t.test("a deleted vdisk's past state can be cloned", async (t) => {
  const e = await setup(t);
  await e.m.create('gone', 64 * KiB, 512);
  const vd = await e.m.get('gone');
  await vd.write(0, Buffer.alloc(1024, 0x42), true);
  const p = (await e.history('gone')).at(-1)!.position;
  await e.m.delete('gone');
  try {
    await e.m.clone('gone', 'revived', { position: p });
    same(t, await e.exported('revived'), Buffer.concat([Buffer.alloc(1024, 0x42), Buffer.alloc(63 * KiB)]), 'the clone has the deleted vdisk\'s content at p');
  } catch (err) {
    t.fail(`cloning a deleted vdisk at a past position fails: ${(err as Error).message}`);
  }
  await rejectsWith(t, e.m.clone('gone', 'too-late', 'now'), 'VDISK_NOT_FOUND');
});

t.test('delete, then create the same name: an empty disk with a fresh history', { skip }, async (t) => {
  const e = await setup(t);
  await e.m.create('again', 8 * MiB);
  await qemuIo(t, e.uri('again'), ['write -P 0x61 0 4M', 'flush']);
  await e.m.snapshot('again', 'old');
  const oldHist = await e.history('again');
  const q = new QemuIoSession(e.uri('again'));
  t.teardown(() => q.kill());
  t.match(await q.cmd('read -P 0x61 0 4k'), /read 4096\/4096/);

  await e.m.delete('again');
  await waitFor(() => e.server.connections === 0, 10_000, 'the clients to be disconnected');
  t.equal(e.server.connections, 0, 'delete disconnects the clients');
  t.match(await q.cmd('read 0 4k'), /read failed|error/i);
  await rejectsWith(t, e.m.info('again'), 'VDISK_NOT_FOUND');
  await rejectsWith(t, e.m.delete('again'), 'VDISK_NOT_FOUND');
  t.notOk((await e.m.vdisks()).some((v) => v.name === 'again'), 'not listed');
  t.ok((await e.m.names()).includes('again'), 'but still catalogued');
  const gone = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', e.uri('again')]);
  t.not(gone.code, 0, 'no client can open it');

  const info = await e.m.create('again', 4 * MiB, 512);
  t.equal(info.size, 4 * MiB);
  t.equal(info.blockSize, 512);
  t.same(info.snapshots, [], 'no snapshot of the old incarnation');
  t.equal(info.slots, 0, 'no block of the old incarnation');
  same(t, await e.nbdImage('again'), Buffer.alloc(4 * MiB), 'reads as zeroes');
  await e.m.snapshot('again', 'old'); // the name is free again
  await rejectsWith(t, e.m.rollback('again', { position: oldHist[1]!.position }), 'VDISK_INVALID', /did not exist/);
  await rejectsWith(t, e.m.export('again', join(e.scratch, 'x.img'), { position: oldHist[1]!.position }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.create('again', MiB), 'VDISK_EXISTS');

  const h = await e.history('again');
  t.same(h.map((x) => x.type), [...oldHist.map((x) => x.type), 'VdiskDeleted', 'VdiskCreated', 'VdiskSnapshotted'], 'history keeps both incarnations');
  t.same(h.map((x) => x.version), h.map((_, i) => BigInt(i)));
  await qemuIo(t, e.uri('again'), ['write -P 0x62 1M 4k', 'flush', 'read -P 0 0 1M', 'read -P 0x62 1M 4k']);
});

t.test('export at a past position, snapshot and time; zero blocks stay holes', async (t) => {
  const e = await setup(t);
  const SIZE = 64 * MiB;
  await e.m.create('x', SIZE);
  const vd = await e.m.get('x');
  const a = randomBytes(MiB);
  await vd.write(MiB, a, true);
  const pA = (await e.history('x')).at(-1)!;
  await e.m.snapshot('x', 'A');
  await vd.write(MiB + 4096, Buffer.alloc(4096, 0x5b), false);
  await vd.writeZeroes(MiB + 512 * KiB, 512 * KiB, false);
  await vd.write(40 * MiB, Buffer.alloc(100, 0x6c), false);
  await vd.flush();

  const expA = Buffer.alloc(SIZE);
  a.copy(expA, MiB);
  const expB = Buffer.from(expA);
  expB.fill(0x5b, MiB + 4096, MiB + 8192);
  expB.fill(0, MiB + 512 * KiB, 2 * MiB);
  expB.fill(0x6c, 40 * MiB, 40 * MiB + 100);

  for (const [what, target, exp] of [
    ['position', { position: pA.position }, expA],
    ['snapshot', { snapshot: 'A' }, expA],
    ['time', { time: pA.timeNs }, expA],
    ['now', 'now', expB],
    ['creation', { position: (await e.history('x'))[0]!.position }, Buffer.alloc(SIZE)],
  ] as Array<[string, Target, Buffer]>) {
    const f = join(e.scratch, `x-${what}.img`);
    const r = await e.m.export('x', f, target);
    same(t, readFileSync(f), exp, `export at ${what}`);
    const dataBlocks = Math.ceil(exp.length / 4096) - countZeroBlocks(exp, 4096);
    t.equal(r.dataBlocks, dataBlocks, `export at ${what}: ${dataBlocks} data blocks written`);
    t.equal(r.bytes, SIZE);
    t.ok(statSync(f).blocks * 512 <= dataBlocks * 4096 + 64 * KiB, `export at ${what} is sparse (${statSync(f).blocks * 512} bytes allocated)`);
  }
  await rejectsWith(t, e.m.export('x', join(e.scratch, 'bad.img'), { position: 0n }), 'VDISK_INVALID');
  await rejectsWith(t, e.m.export('x', join(e.scratch, 'bad.img'), { snapshot: 'B' }), 'VDISK_NOT_FOUND');
});

function countZeroBlocks(b: Buffer, bs: number): number {
  let n = 0;
  const z = Buffer.alloc(bs);
  for (let i = 0; i < b.length; i += bs) if (b.subarray(i, i + bs).equals(z)) n++;
  return n;
}

type Op =
  | { k: 'write'; off: number; len: number; byte: number; fua: boolean }
  | { k: 'zero'; off: number; len: number }
  | { k: 'trim'; off: number; len: number }
  | { k: 'snapshot' }
  | { k: 'rollback'; pick: number; by: 'position' | 'snapshot' | 'time' | 'now' }
  | { k: 'other' };

t.test('model check: random writes, zeroes, trims, snapshots and rollbacks; every past state exports as the model says, also after a rebuild', async (t) => {
  const dataDir = tempDir(t);
  initDataDir(dataDir);
  let log = await Tlog.open({ dataDir });
  let m = await VdiskManager.open(log);
  t.teardown(async () => {
    await m.close();
    await log.close();
  });
  const scratch = tempDir(t);
  const BS = 512;
  const SIZE = 16 * BS;
  await m.create('noise', SIZE, BS);
  const noise = await m.get('noise');

  const span = fc.integer({ min: 0, max: SIZE - 1 }).chain((off) => fc.integer({ min: 1, max: Math.min(SIZE - off, 3 * BS) }).map((len) => ({ off, len })));
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ s: span, byte: fc.integer({ min: 1, max: 255 }), fua: fc.boolean() }).map(({ s, byte, fua }) => ({ k: 'write' as const, ...s, byte, fua })) },
    { weight: 2, arbitrary: span.map((s) => ({ k: 'zero' as const, ...s })) },
    { weight: 1, arbitrary: span.map((s) => ({ k: 'trim' as const, ...s })) },
    { weight: 1, arbitrary: fc.constant({ k: 'snapshot' as const }) },
    { weight: 3, arbitrary: fc.record({ pick: fc.nat(), by: fc.constantFrom('position' as const, 'snapshot' as const, 'time' as const, 'now' as const) }).map((r) => ({ k: 'rollback' as const, ...r })) },
    { weight: 1, arbitrary: fc.constant({ k: 'other' as const }) },
  );

  /** Per run: the vdisk name and its states by position (every event of its stream). */
  const runs: Array<{ name: string; states: Map<bigint, Buffer> }> = [];
  let run = 0;
  const stateAt = (states: Map<bigint, Buffer>, p: bigint): Buffer => {
    let best = -1n;
    for (const q of states.keys()) if (q <= p && q > best) best = q;
    return states.get(best)!;
  };

  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 25 }), async (ops) => {
      const name = `run-${run++}`;
      await m.create(name, SIZE, BS);
      const vd = await m.get(name);
      const states = new Map<bigint, Buffer>();
      const snapshots: Array<{ name: string; position: bigint }> = [];
      let model = Buffer.alloc(SIZE);
      const lastEvent = async (): Promise<HistoryEntry> => {
        let last: HistoryEntry | undefined;
        for await (const h of m.history(name)) last = h;
        return last!;
      };
      states.set((await lastEvent()).position, Buffer.from(model));
      for (const op of ops) {
        switch (op.k) {
          case 'write':
            await vd.write(op.off, Buffer.alloc(op.len, op.byte), op.fua);
            model.fill(op.byte, op.off, op.off + op.len);
            break;
          case 'zero':
            await vd.writeZeroes(op.off, op.len, false);
            model.fill(0, op.off, op.off + op.len);
            break;
          case 'trim':
            await vd.trim(op.off, op.len, false);
            model.fill(0, op.off, op.off + op.len);
            break;
          case 'snapshot': {
            const p = await m.snapshot(name, `s${snapshots.length}`);
            snapshots.push({ name: `s${snapshots.length}`, position: p });
            break;
          }
          case 'other':
            await noise.write(0, randomBytes(100), false);
            await noise.flush();
            break;
          case 'rollback': {
            const positions = [...states.keys()];
            let target: Target;
            let want: Buffer;
            if (op.by === 'now') {
              target = 'now';
              want = model;
            } else if (op.by === 'snapshot' && snapshots.length > 0) {
              const s = snapshots[op.pick % snapshots.length]!;
              target = { snapshot: s.name };
              want = stateAt(states, s.position);
            } else if (op.by === 'time') {
              const hist: HistoryEntry[] = [];
              for await (const h of m.history(name)) hist.push(h);
              const h = hist[op.pick % hist.length]!;
              target = { time: h.timeNs };
              const lastAtTime = hist.filter((x) => x.timeNs <= h.timeNs).at(-1)!;
              want = stateAt(states, lastAtTime.position);
            } else {
              const p = positions[op.pick % positions.length]!;
              target = { position: p };
              want = stateAt(states, p);
            }
            await m.rollback(name, target);
            model = Buffer.from(want);
            break;
          }
        }
        await vd.flush();
        const now = await vd.read(0, SIZE);
        if (!now.equals(model)) throw new Error(`${name}: after ${JSON.stringify(op)} the vdisk reads ${sha(now)}, the model says ${sha(model)}`);
        states.set((await lastEvent()).position, Buffer.from(model));
      }
      // Every recorded state, exported at its position and at the next one (often another stream's event).
      const head = await log.headPosition();
      for (const [p, want] of states) {
        for (const q of [p, p + 1n]) {
          if (q >= head) continue;
          const f = join(scratch, `${name}.img`);
          await m.export(name, f, { position: q });
          const got = readFileSync(f);
          const exp = stateAt(states, q);
          if (!got.equals(exp)) throw new Error(`${name}: export at ${q} is ${sha(got)}, the model says ${sha(exp)}`);
        }
        void want;
      }
      runs.push({ name, states });
    }),
    { numRuns: 25 },
  );
  t.equal(runs.length, 25, 'every run passed');

  // The block stores are caches: from the log alone, every past state comes back the same.
  await m.close();
  await log.close();
  rmSync(join(dataDir, 'views'), { recursive: true, force: true });
  log = await Tlog.open({ dataDir });
  m = await VdiskManager.open(log);
  let checked = 0;
  for (const { name, states } of runs) {
    for (const [p, want] of states) {
      const f = join(scratch, `${name}-rebuilt.img`);
      await m.export(name, f, { position: p });
      if (readFileSync(f).equals(want)) checked++;
      else t.fail(`${name}: after the rebuild, export at ${p} differs from the model`);
    }
    const vd = await m.get(name);
    const last = [...states.entries()].at(-1)![1];
    t.ok((await vd.read(0, SIZE)).equals(last), `${name}: current content after the rebuild`);
  }
  t.ok(checked > 100, `${checked} past states identical after the rebuild`);
});
