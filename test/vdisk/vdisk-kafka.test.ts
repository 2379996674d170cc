/**
 * The vdisk flows on the Kafka backend (a real broker, started by this test):
 * create, real-client writes and reads, FUA durability, snapshot/rollback,
 * clone, and the block store rebuilt from the Kafka log alone — in the same
 * data directory, and in a brand-new one that has only the master key.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tlog, initDataDir } from '../../tlog/index.ts';
import { NbdServer } from '../../nbd/index.ts';
import { VdiskManager, type Target } from '../../vdisk/index.ts';
import { tempDir } from '../helpers/tmp.ts';
import { kafkaSkip, sharedTestBroker } from '../helpers/kafka.ts';
import { toolsSkip } from '../helpers/tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

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

async function qemuIo(t: Test, uri: string, cmds: string[]): Promise<void> {
  const r = await runAsync('qemu-io', ['-f', 'raw', '-t', 'writeback', ...cmds.flatMap((c) => ['-c', c]), uri]);
  t.equal(r.code, 0, `qemu-io exits 0: ${r.stderr}`);
  t.notMatch(r.stdout + r.stderr, /Pattern verification failed|failed|error/i, `qemu-io: ${cmds.join('; ')}`);
}

/** The broker is shared by this file's tests and stopped when the file ends. */
const root = t;

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The newest content of each block of a vdisk's stream, as a separate read-only reader of the Kafka log sees it. */
async function blocksInLog(dataDir: string, log: string, name: string): Promise<Map<number, { data: Buffer; flushed: boolean }>> {
  const reader = await Tlog.open({ dataDir, log, readOnly: true });
  try {
    const out = new Map<number, { data: Buffer; flushed: boolean }>();
    let bs = 0;
    for await (const e of reader.readStream(`vdisk-${name}`)) {
      if (e.type === 'VdiskCreated') bs = (e.data as { blockSize: number }).blockSize;
      if (e.type !== 'VdiskBlocksWritten') continue;
      const d = e.data as { blocks: Buffer; data: Buffer; flushed: boolean };
      for (let i = 0; i < d.blocks.length / 8; i++) out.set(Number(d.blocks.readBigUInt64LE(i * 8)), { data: d.data.subarray(i * bs, (i + 1) * bs), flushed: d.flushed });
    }
    return out;
  } finally {
    await reader.close();
  }
}

t.test('vdisks on the Kafka log', { skip: kafkaSkip() || toolsSkip(['qemu-io', 'nbdcopy', 'nbdinfo', 'fio']) }, async (t) => {
  const broker = await sharedTestBroker(root);
  const logUrl = `kafka://${broker.bootstrap}/vdisk-${randomBytes(6).toString('hex')}`;
  const dataDir = tempDir(t);
  initDataDir(dataDir);
  const scratch = tempDir(t);
  const warnings: string[] = [];
  let log = await Tlog.open({ dataDir, log: logUrl });
  let m = await VdiskManager.open(log, { onWarning: (w) => warnings.push(w) });
  let server = new NbdServer({ exports: m });
  m.onDisconnect = (n) => server.disconnectExport(n);
  let port = (await server.listen(0)).port;
  let open = true;
  const closeAll = async (): Promise<void> => {
    if (!open) return;
    open = false;
    await server.close();
    await m.close();
    await log.close();
  };
  t.teardown(closeAll);
  const uri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;
  const exported = async (name: string, target: Target = 'now'): Promise<Buffer> => {
    const f = join(scratch, `${name}-${randomBytes(4).toString('hex')}.img`);
    await m.export(name, f, target);
    const b = readFileSync(f);
    rmSync(f);
    return b;
  };
  const model = new Map<string, Buffer>();

  await m.create('k1', 64 * MiB);
  await m.create('k2', 16 * MiB, 512);
  t.ok(log.viewDir('vdisk').includes(join('views', 'kafka-')), `the views of a Kafka log live apart from the file log's (${log.viewDir('vdisk')})`);

  t.test('nbdinfo sees the vdisks', async (t) => {
    const r = await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    t.equal(r.code, 0, r.stderr);
    const exports = (JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> }).exports;
    t.same(exports.map((e) => [e['export-name'], e['export-size'], e['block_size_preferred']]).sort(), [['k1', 64 * MiB, 4096], ['k2', 16 * MiB, 512]]);
  });

  t.test('qemu-io writes and reads back; the export matches', async (t) => {
    await qemuIo(t, uri('k1'), ['write -P 0xa1 0 1M', 'write -P 0xa2 5000 3000', 'write -P 0xa3 2M 300k', 'write -z 64k 64k', 'discard 512k 64k', 'flush', 'write -f -P 0xa4 10M 4k']);
    await qemuIo(t, uri('k1'), ['read -P 0xa1 0 5000', 'read -P 0xa2 5000 3000', 'read -P 0xa1 8000 57536', 'read -P 0 64k 64k', 'read -P 0xa1 128k 384k', 'read -P 0 512k 64k', 'read -P 0xa1 576k 448k', 'read -P 0xa3 2M 300k', 'read -P 0xa4 10M 4k', 'read -P 0 11M 1M']);
    const k1 = Buffer.alloc(64 * MiB);
    k1.fill(0xa1, 0, MiB).fill(0xa2, 5000, 8000).fill(0xa3, 2 * MiB, 2 * MiB + 300 * KiB).fill(0, 64 * KiB, 128 * KiB).fill(0, 512 * KiB, 576 * KiB).fill(0xa4, 10 * MiB, 10 * MiB + 4 * KiB);
    model.set('k1', k1);
    t.equal(sha256(await exported('k1')), sha256(k1), 'the exported image equals the model');
    await qemuIo(t, uri('k2'), ['write -P 0xb1 100 1000', 'write -f -P 0xb2 1M 513', 'read -P 0xb1 100 1000', 'read -P 0xb2 1M 513']);
    const k2 = Buffer.alloc(16 * MiB);
    k2.fill(0xb1, 100, 1100).fill(0xb2, MiB, MiB + 513);
    model.set('k2', k2);
    t.equal(sha256(await exported('k2')), sha256(k2));
  });

  t.test('a FUA write is in Kafka when the client gets its reply', async (t) => {
    const q = spawn('qemu-io', ['-f', 'raw', '-t', 'writeback', uri('k1')]);
    t.teardown(() => q.kill('SIGKILL'));
    let out = '';
    q.stdout.on('data', (d: Buffer) => (out += d.toString()));
    q.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const waitOut = async (re: RegExp): Promise<void> => {
      const deadline = Date.now() + 30_000;
      while (!re.test(out)) {
        if (Date.now() > deadline) throw new Error(`qemu-io: no ${re} in ${out}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    await waitOut(/qemu-io> $/);
    q.stdin.write('write -f -P 0x5e 20M 64k\n');
    await waitOut(/wrote 65536\/65536 bytes at offset 20971520/);
    const blocks = await blocksInLog(dataDir, logUrl, 'k1');
    const fua = Array.from({ length: 16 }, (_, i) => blocks.get(5120 + i));
    t.ok(fua.every((b) => b?.data.equals(Buffer.alloc(4096, 0x5e))), 'all 16 blocks are in the Kafka log');
    t.ok(fua.every((b) => b?.flushed === true), 'in a batch marked flushed');
    q.stdin.end('quit\n');
    await new Promise((r) => q.on('exit', r));
    model.get('k1')!.fill(0x5e, 20 * MiB, 20 * MiB + 64 * KiB);
  });

  t.test('snapshot, write, rollback to the snapshot, roll forward', async (t) => {
    const snap = await m.snapshot('k1', 'before');
    const atSnap = Buffer.from(model.get('k1')!);
    await qemuIo(t, uri('k1'), ['write -P 0xc1 0 4M', 'write -z 30M 1M', 'flush']);
    const after = Buffer.from(atSnap).fill(0xc1, 0, 4 * MiB).fill(0, 30 * MiB, 31 * MiB);
    const r = await m.rollback('k1', { snapshot: 'before' });
    t.equal(r.toPosition, snap);
    const back = join(scratch, 'k1-rolled.img');
    const c = await runAsync('nbdcopy', [uri('k1'), back]);
    t.equal(c.code, 0, c.stderr);
    t.equal(sha256(readFileSync(back)), sha256(atSnap), 'a client reads the snapshot content');
    await m.rollback('k1', { position: r.position - 1n });
    t.equal(sha256(await exported('k1')), sha256(after), 'rolling forward restores the writes');
    await m.rollback('k1', { snapshot: 'before' });
    t.equal(sha256(await exported('k1')), sha256(atSnap), 'and back again');
  });

  t.test('nbdcopy round trip and a clone at a past position', async (t) => {
    const src = join(scratch, 'src.img');
    const bytes = randomBytes(16 * MiB);
    writeFileSync(src, bytes);
    let before = -1n;
    for await (const h of m.history('k2')) if (h.type === 'VdiskCreated') before = h.position;
    let r = await runAsync('nbdcopy', ['--flush', src, uri('k2')]);
    t.equal(r.code, 0, r.stderr);
    const out = join(scratch, 'out.img');
    r = await runAsync('nbdcopy', [uri('k2'), out]);
    t.equal(r.code, 0, r.stderr);
    t.ok(readFileSync(out).equals(bytes), 'byte-identical through Kafka');
    await m.clone('k2', 'k2-old', { position: before });
    t.equal(sha256(await exported('k2-old')), sha256(Buffer.alloc(16 * MiB)), 'a clone at the creation is empty');
    const pastModel = model.get('k2')!;
    model.set('k2', bytes);
    t.not(sha256(pastModel), sha256(bytes));
    model.set('k2-old', Buffer.alloc(16 * MiB));
  });

  t.test('a fio crc32c verify job over Kafka', async (t) => {
    const r = await runAsync('fio', ['--name=verify', '--ioengine=nbd', `--uri=${uri('k1')}`, '--rw=randwrite', '--bs=4k', '--offset=40m', '--size=8m', '--iodepth=16',
      '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json']);
    t.equal(r.code, 0, r.stderr);
    const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { total_ios: number }; read: { total_ios: number } }> }).jobs[0]!;
    t.equal(job.error, 0);
    t.ok(job.read.total_ios >= 2048, `verified ${job.read.total_ios} blocks`);
    // fio's data is now part of k1: take the model from the vdisk for the rebuild checks below.
    model.set('k1', await exported('k1'));
  });

  t.test('the block store rebuilt from Kafka is checksum-identical', async (t) => {
    const sums = new Map<string, string>();
    for (const n of ['k1', 'k2', 'k2-old']) sums.set(n, sha256(await exported(n)));
    const snapSum = sha256(await exported('k1', { snapshot: 'before' }));
    for (const [n, b] of model) t.equal(sums.get(n), sha256(b), `${n} matches the model before the rebuild`);

    await closeAll();
    rmSync(log.viewDir('vdisk'), { recursive: true, force: true });
    open = true;
    log = await Tlog.open({ dataDir, log: logUrl });
    m = await VdiskManager.open(log, { onWarning: (w) => warnings.push(w) });
    server = new NbdServer({ exports: m });
    m.onDisconnect = (n) => server.disconnectExport(n);
    port = (await server.listen(0)).port;
    for (const [n, sum] of sums) t.equal(sha256(await exported(n)), sum, `${n}: same checksum after the rebuild`);
    t.equal(sha256(await exported('k1', { snapshot: 'before' })), snapSum, 'same checksum at the snapshot');
    const out = join(scratch, 'after.img');
    const r = await runAsync('nbdcopy', [uri('k2'), out]);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256(readFileSync(out)), sums.get('k2'), 'a client reads the same bytes');
    t.same(warnings, []);
  });

  t.test('a new data directory with only the master key rebuilds every vdisk from Kafka', async (t) => {
    const other = tempDir(t);
    mkdirSync(other, { recursive: true });
    copyFileSync(join(dataDir, 'master.key'), join(other, 'master.key'));
    initDataDir(other);
    const log2 = await Tlog.open({ dataDir: other, log: logUrl, readOnly: true }).catch(() => null);
    t.ok(log2, 'the Kafka log opens from the other data directory');
    if (!log2) return;
    await log2.close();
    // A second writer would fence the first: hand the log over.
    await closeAll();
    const log3 = await Tlog.open({ dataDir: other, log: logUrl });
    const m3 = await VdiskManager.open(log3);
    t.teardown(async () => {
      await m3.close();
      await log3.close();
    });
    t.same((await m3.vdisks()).map((v) => v.name), ['k1', 'k2', 'k2-old']);
    for (const n of ['k1', 'k2', 'k2-old']) {
      const f = join(scratch, `${n}-other.img`);
      await m3.export(n, f);
      t.equal(sha256(readFileSync(f)), sha256(model.get(n)!), `${n}: same content, rebuilt in a new data directory`);
    }
    t.same((await m3.info('k1')).snapshots.map((s) => s.name), ['before']);
  });
});

t.test('a second writer on the same Kafka log fences the first: its vdisk stops, nothing flushed is lost', { skip: kafkaSkip() }, async (t) => {
  const broker = await sharedTestBroker(root);
  const logUrl = `kafka://${broker.bootstrap}/fence-${randomBytes(6).toString('hex')}`;
  const dirA = tempDir(t);
  initDataDir(dirA);
  const dirB = tempDir(t);
  copyFileSync(join(dirA, 'master.key'), join(dirB, 'master.key'));
  initDataDir(dirB);

  const warningsA: string[] = [];
  const disconnectsA: string[] = [];
  const logA = await Tlog.open({ dataDir: dirA, log: logUrl });
  const mA = await VdiskManager.open(logA, { onWarning: (w) => warningsA.push(w) });
  mA.onDisconnect = (n) => disconnectsA.push(n);
  t.teardown(async () => {
    await mA.close().catch(() => undefined);
    await logA.close().catch(() => undefined);
  });
  await mA.create('shared', 4 * MiB);
  const a = await mA.get('shared');
  const flushedByA = randomBytes(64 * KiB);
  await a.write(0, flushedByA, false);
  await a.flush();

  // Another host (its own data directory, the same key) takes the log over and writes.
  const logB = await Tlog.open({ dataDir: dirB, log: logUrl });
  const mB = await VdiskManager.open(logB);
  t.teardown(async () => {
    await mB.close();
    await logB.close();
  });
  const b = await mB.get('shared');
  t.ok((await b.read(0, 64 * KiB)).equals(flushedByA), "B sees A's flushed write");
  await b.write(MiB, Buffer.alloc(4096, 0xbb), true);

  // A is fenced: its next durable write fails, loudly, and its clients are let go.
  await a.write(2 * MiB, Buffer.alloc(4096, 0xaa), false);
  await t.rejects(a.flush(), { code: 'VDISK_FAILED' }, "A's flush fails");
  t.ok(warningsA.some((w) => /a write could not be logged/.test(w)), `A warned: ${warningsA.join(' | ')}`);
  t.same(disconnectsA, ['shared'], "A's clients were disconnected");
  const seenByB = await mB.get('shared');
  t.ok((await seenByB.read(2 * MiB, 4096)).equals(Buffer.alloc(4096)), "A's write after the takeover never reached the log");
  t.ok((await seenByB.read(MiB, 4096)).equals(Buffer.alloc(4096, 0xbb)), "B's write is there");
  t.ok((await seenByB.read(0, 64 * KiB)).equals(flushedByA), "and A's flushed write too");
});
