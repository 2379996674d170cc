/**
 * Vdisks served over NBD to real clients: nbdinfo, qemu-io, nbdcopy, qemu-img
 * and fio's nbd engine, spawned as separate processes (the server, the vdisk
 * manager and the log live in this process, so its event loop must stay free).
 *
 * Every client-visible result is also checked against the vdisk itself: an
 * in-test model of the bytes each client wrote is compared with
 * VdiskManager.export, and durability claims (FUA) with what a second,
 * read-only log reader finds in the vdisk's stream.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tlog } from '../../tlog/index.ts';
import { NbdServer } from '../../nbd/index.ts';
import { VdiskManager } from '../../vdisk/index.ts';
import { openTempLog, tempDir, waitFor } from '../helpers/tmp.ts';
import { toolsSkip } from '../helpers/tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

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

/**
 * qemu-io with one -c per command; fails the test on any failed command or
 * pattern mismatch. Writeback cache: qemu-io's default (writethrough) would
 * make every write FUA, and `flush` / `write -f` would test nothing.
 */
async function qemuIo(t: Test, uri: string, cmds: string[]): Promise<Ran> {
  const r = await runAsync('qemu-io', ['-f', 'raw', '-t', 'writeback', ...cmds.flatMap((c) => ['-c', c]), uri]);
  t.equal(r.code, 0, `qemu-io exits 0: ${r.stderr}`);
  t.notMatch(r.stdout + r.stderr, /Pattern verification failed|failed|error/i, `every command succeeded and every pattern verified: ${cmds.join('; ')}`);
  return r;
}

/** An interactive qemu-io: one connection kept open across commands. */
class QemuIoSession {
  readonly #p: ChildProcessWithoutNullStreams;
  #out = '';
  readonly exited: Promise<number | null>;

  /** cache: qemu-io's default is writethrough (every write FUA); writeback sends FUA only for write -f. */
  constructor(uri: string, cache: 'writeback' | 'writethrough' = 'writeback') {
    this.#p = spawn('qemu-io', ['-f', 'raw', '-t', cache, uri]);
    this.#p.stdout.on('data', (d: Buffer) => (this.#out += d.toString()));
    this.#p.stderr.on('data', (d: Buffer) => (this.#out += d.toString()));
    this.exited = new Promise((resolve) => this.#p.on('exit', resolve));
  }

  /** Wait for the prompt, then send a command and return its output up to the next prompt. */
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

  async quit(): Promise<number | null> {
    this.#p.stdin.end('quit\n');
    return this.exited;
  }

  kill(): void {
    this.#p.kill('SIGKILL');
  }
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A model of a disk's bytes, driven by the same operations the client sends. */
class Model {
  readonly bytes: Buffer;
  constructor(size: number) {
    this.bytes = Buffer.alloc(size);
  }
  fill(pattern: number, off: number, len: number): void {
    this.bytes.fill(pattern, off, off + len);
  }
  zero(off: number, len: number): void {
    this.bytes.fill(0, off, off + len);
  }
}

async function exportImage(m: VdiskManager, name: string, dir: string): Promise<Buffer> {
  const file = join(dir, `${name}-${randomBytes(4).toString('hex')}.img`);
  await m.export(name, file);
  return readFileSync(file);
}

/** Every block the vdisk's stream holds, as a second reader of the log sees it: newest content, and whether a FLUSH/FUA closed its batch. */
async function blocksInLog(dataDir: string, name: string): Promise<Map<number, { data: Buffer; flushed: boolean }>> {
  const reader = await Tlog.open({ dataDir, readOnly: true });
  try {
    const blocks = new Map<number, { data: Buffer; flushed: boolean }>();
    let blockSize = 0;
    for await (const e of reader.readStream(`vdisk-${name}`)) {
      if (e.type === 'VdiskCreated') {
        blocks.clear();
        blockSize = (e.data as { blockSize: number }).blockSize;
      }
      if (e.type !== 'VdiskBlocksWritten') continue;
      const d = e.data as { blocks: Buffer; data: Buffer; zeroRanges: Buffer; flushed: boolean };
      for (let i = 0; i < d.blocks.length / 8; i++) {
        blocks.set(Number(d.blocks.readBigUInt64LE(i * 8)), { data: d.data.subarray(i * blockSize, (i + 1) * blockSize), flushed: d.flushed });
      }
      for (let i = 0; i < d.zeroRanges.length / 16; i++) {
        const first = Number(d.zeroRanges.readBigUInt64LE(i * 16));
        const count = Number(d.zeroRanges.readBigUInt64LE(i * 16 + 8));
        for (let b = first; b < first + count; b++) blocks.set(b, { data: Buffer.alloc(blockSize), flushed: d.flushed });
      }
    }
    return blocks;
  } finally {
    await reader.close();
  }
}

t.test('vdisks with real NBD clients', { skip: toolsSkip(['nbdinfo', 'nbdcopy', 'qemu-io', 'qemu-img', 'fio']) }, async (t) => {
  const { log, dir: dataDir } = await openTempLog(t);
  const warnings: string[] = [];
  const m = await VdiskManager.open(log, { onWarning: (w) => warnings.push(w) });
  t.teardown(() => m.close());
  const errors: unknown[] = [];
  const server = new NbdServer({ exports: m, onError: (e) => errors.push(e) });
  m.onDisconnect = (n) => server.disconnectExport(n);
  const { port } = await server.listen(0);
  t.teardown(() => server.close());
  const uri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;
  const scratch = tempDir(t);

  await m.create('web1', 128 * MiB);
  await m.create('data', 64 * MiB);
  await m.create('small', 16 * MiB, 512);
  await m.create('big-blocks', 32 * MiB, 65536);

  t.test('nbdinfo sees every vdisk with its size, block size and flags', async (t) => {
    const list = await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    t.equal(list.code, 0, list.stderr);
    const info = JSON.parse(list.stdout) as { exports: Array<Record<string, unknown>> };
    const byName = new Map(info.exports.map((e) => [e['export-name'] as string, e]));
    t.same([...byName.keys()].sort(), ['big-blocks', 'data', 'small', 'web1']);
    const expected: Record<string, [number, number]> = { web1: [128 * MiB, 4096], data: [64 * MiB, 4096], small: [16 * MiB, 512], 'big-blocks': [32 * MiB, 65536] };
    for (const [name, [size, bs]] of Object.entries(expected)) {
      const e = byName.get(name)!;
      t.equal(e['export-size'], size, `${name} size`);
      t.equal(e['block_size_preferred'], bs, `${name} preferred block size is the vdisk's block size`);
      t.equal(e['is_read_only'], false, `${name} is writable`);
      for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn']) t.equal(e[flag], true, `${name} ${flag}`);
    }
    const one = await runAsync('nbdinfo', ['--json', uri('small')]);
    t.equal(one.code, 0, one.stderr);
    t.equal((JSON.parse(one.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!['export-size'], 16 * MiB);
    const missing = await runAsync('nbdinfo', ['--json', uri('no-such-vdisk')]);
    t.not(missing.code, 0, 'an unknown vdisk is not served');
  });

  t.test('the export list follows create, clone and delete', async (t) => {
    await m.create('temp', 4 * MiB);
    await m.clone('temp', 'temp-clone');
    let names = (JSON.parse((await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`])).stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']);
    t.ok(names.includes('temp') && names.includes('temp-clone'), `new vdisks are listed: ${names.join(', ')}`);
    await m.delete('temp');
    await m.delete('temp-clone');
    names = (JSON.parse((await runAsync('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`])).stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']);
    t.notOk(names.includes('temp') || names.includes('temp-clone'), `deleted vdisks are not listed: ${names.join(', ')}`);
    const gone = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', uri('temp')]);
    t.not(gone.code, 0, 'a deleted vdisk cannot be opened');
  });

  for (const name of ['web1', 'small', 'big-blocks']) {
    t.test(`qemu-io patterns on ${name}: aligned, sub-block, spanning, zero, discard, FUA`, async (t) => {
      const size = (await m.info(name)).size;
      const model = new Model(size);
      const ops: Array<[string, () => void]> = [
        ['write -P 0xab 0 1M', () => model.fill(0xab, 0, MiB)],
        // Sub-block writes inside one block, and across a block boundary, over data.
        ['write -P 0x11 5000 3000', () => model.fill(0x11, 5000, 3000)],
        ['write -P 0x12 4000 200', () => model.fill(0x12, 4000, 200)],
        ['write -P 0x13 511 2', () => model.fill(0x13, 511, 2)],
        // Spanning many blocks with unaligned ends, into untouched space.
        ['write -P 0x33 1049000 300000', () => model.fill(0x33, 1049000, 300000)],
        // A sub-block write into a never-written block (read-modify-write of zeroes).
        ['write -P 0x44 3000000 10', () => model.fill(0x44, 3_000_000, 10)],
        // Aligned 64k, then overwritten in the middle.
        ['write -P 0xcd 2M 256k', () => model.fill(0xcd, 2 * MiB, 256 * KiB)],
        ['write -P 0xce 2162688 65536', () => model.fill(0xce, 2162688, 65536)],
        ['flush', () => undefined],
        // WRITE_ZEROES: aligned, unaligned, and unmap-allowed.
        ['write -z 128k 128k', () => model.zero(128 * KiB, 128 * KiB)],
        ['write -z 6000 1000', () => model.zero(6000, 1000)],
        ['write -z -u 2M 64k', () => model.zero(2 * MiB, 64 * KiB)],
        // TRIM reads back as zeroes on a vdisk.
        ['discard 512k 128k', () => model.zero(512 * KiB, 128 * KiB)],
        // FUA.
        ['write -f -P 0x22 4M 4k', () => model.fill(0x22, 4 * MiB, 4 * KiB)],
        ['write -f -P 0x23 5M 100', () => model.fill(0x23, 5 * MiB, 100)],
        // The last bytes of the disk.
        [`write -P 0x7e ${size - 700} 700`, () => model.fill(0x7e, size - 700, 700)],
      ];
      for (const [, apply] of ops) apply();
      const reads = [
        'read -P 0xab 0 511',
        'read -P 0x13 511 2',
        'read -P 0xab 513 3487',
        'read -P 0x12 4000 200',
        'read -P 0xab 4200 800',
        'read -P 0x11 5000 1000',
        'read -P 0 6000 1000',
        'read -P 0x11 7000 1000',
        'read -P 0xab 8000 123072',
        'read -P 0 128k 128k',
        'read -P 0xab 256k 256k',
        'read -P 0 512k 128k',
        'read -P 0xab 640k 384k',
        'read -P 0 1M 424',
        'read -P 0x33 1049000 300000',
        'read -P 0 1349000 100',
        'read -P 0 2999990 10',
        'read -P 0x44 3000000 10',
        'read -P 0 3000010 10',
        'read -P 0 2M 64k',
        'read -P 0xce 2162688 65536',
        'read -P 0xcd 2228224 131072',
        'read -P 0x22 4M 4k',
        'read -P 0x23 5M 100',
        'read -P 0 5243000 4000',
        `read -P 0x7e ${size - 700} 700`,
        `read -P 0 ${size - 4096} 3396`,
      ];
      await qemuIo(t, uri(name), ops.map(([c]) => c));
      // A second connection reads it all back.
      await qemuIo(t, uri(name), reads);
      // The vdisk holds exactly the model's bytes (no stray writes elsewhere).
      const img = await exportImage(m, name, scratch);
      t.equal(img.length, size);
      t.ok(img.equals(model.bytes), `exported image equals the model (sha256 ${sha256(img).slice(0, 12)} vs ${sha256(model.bytes).slice(0, 12)})`);
      const history = [];
      for await (const h of m.history(name)) history.push(h);
      t.ok(history.some((h) => h.type === 'VdiskBlocksWritten' && h.flushed === true), 'a FLUSH/FUA closed a batch');
      t.ok(history.some((h) => h.type === 'VdiskBlocksWritten' && (h.zeroed ?? 0) > 0), 'zeroes travel as zeroed block ranges');
    });
  }

  t.test('a FUA write from qemu-io is in the log, in a batch marked flushed, when qemu-io sees the reply', async (t) => {
    const q = new QemuIoSession(uri('data'));
    t.teardown(() => q.kill());
    const marker = randomBytes(1).readUInt8(0) | 1;
    let out = await q.cmd(`write -f -P ${marker} 8M 64k`);
    t.match(out, /wrote 65536\/65536 bytes at offset 8388608/);
    // No further command (and no FLUSH) was sent: only FUA can have made it durable.
    let blocks = await blocksInLog(dataDir, 'data');
    const fuaBlocks = Array.from({ length: 16 }, (_, i) => blocks.get(2048 + i));
    t.ok(fuaBlocks.every((b) => b?.data.equals(Buffer.alloc(4096, marker))), 'all 16 blocks of the FUA write are in the vdisk stream with their content');
    t.ok(fuaBlocks.every((b) => b?.flushed === true), 'their batch is marked flushed');

    // Contrast: a plain write reaches the log in the background, in a batch not marked flushed.
    out = await q.cmd(`write -P ${marker ^ 0xff} 9M 4k`);
    t.match(out, /wrote 4096\/4096 bytes/);
    await waitFor(async () => (blocks = await blocksInLog(dataDir, 'data')).has(2304), 10_000, 'the plain write to reach the log');
    t.ok(blocks.get(2304)!.data.equals(Buffer.alloc(4096, marker ^ 0xff)), 'the plain write is logged');
    t.equal(blocks.get(2304)!.flushed, false, 'in a batch not marked flushed');
    t.equal(await q.quit(), 0);
  });

  t.test('nbdcopy round trip is byte-identical; qemu-img compare agrees with the export', async (t) => {
    const src = join(scratch, 'src.img');
    const back = join(scratch, 'back.img');
    const bytes = randomBytes(64 * MiB);
    // Holes in the source: nbdcopy may skip or zero them; the vdisk must read zeroes there.
    bytes.fill(0, 10 * MiB, 14 * MiB);
    writeFileSync(src, bytes);
    let r = await runAsync('nbdcopy', ['--flush', src, uri('data')]);
    t.equal(r.code, 0, r.stderr);
    r = await runAsync('nbdcopy', [uri('data'), back]);
    t.equal(r.code, 0, r.stderr);
    const copied = readFileSync(back);
    t.equal(copied.length, bytes.length);
    t.ok(copied.equals(bytes), 'copied back byte-identical');
    const img = join(scratch, 'data-export.img');
    await m.export('data', img);
    t.equal(sha256(readFileSync(img)), sha256(bytes), 'the exported image has the same checksum');
    r = await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, uri('data')]);
    t.equal(r.code, 0, `qemu-img compare export vs NBD: ${r.stdout}${r.stderr}`);
    r = await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri('data')]);
    t.equal(r.code, 0, `qemu-img compare source vs NBD: ${r.stdout}${r.stderr}`);
    const other = join(scratch, 'other.img');
    bytes[40 * MiB + 123]! ^= 0x40;
    writeFileSync(other, bytes);
    r = await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', other, uri('data')]);
    t.equal(r.code, 1, 'qemu-img compare notices one changed byte');
    t.match(r.stdout, /Content mismatch at offset 41943040/);
  });

  t.test('a fio crc32c verify job passes, and verifies again after the view is rebuilt from the log', async (t) => {
    const job = ['--name=verify', '--ioengine=nbd', `--uri=${uri('web1')}`, '--rw=randwrite', '--bsrange=4k-64k',
      '--offset=32m', '--size=32m', '--iodepth=16', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--randseed=1234', '--output-format=json'];
    let r = await runAsync('fio', [...job, '--do_verify=1']);
    t.equal(r.code, 0, r.stderr);
    const first = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { total_ios: number; io_bytes: number }; read: { total_ios: number } }> }).jobs[0]!;
    t.equal(first.error, 0);
    t.ok(first.write.io_bytes >= 32 * MiB, `wrote ${first.write.io_bytes} bytes`);
    t.ok(first.read.total_ios >= first.write.total_ios, `verified ${first.read.total_ios} of ${first.write.total_ios} writes`);

    const before = sha256(await exportImage(m, 'web1', scratch));
    await m.rebuild('web1');
    t.equal(sha256(await exportImage(m, 'web1', scratch)), before, 'same content after the block store was rebuilt');
    r = await runAsync('fio', [...job, '--verify_only=1']);
    t.equal(r.code, 0, `fio --verify_only after the rebuild: ${r.stderr}`);
    const again = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; read: { total_ios: number } }> }).jobs[0]!;
    t.equal(again.error, 0);
    t.ok(again.read.total_ios > 0, `re-verified ${again.read.total_ios} blocks`);
  });

  t.test('several clients at once, on one vdisk and on several', async (t) => {
    const jobs = await Promise.all([
      ...[0, 1, 2, 3].map((i) => runAsync('qemu-io', ['-f', 'raw', '-c', `write -P ${0x40 + i} ${64 + i * 4}M 1M`, '-c', 'flush', '-c', `read -P ${0x40 + i} ${64 + i * 4}M 1M`, uri('web1')])),
      runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x50 8M 1M', '-c', 'read -P 0x50 8M 1M', uri('small')]),
      runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x51 8M 1M', '-c', 'read -P 0x51 8M 1M', uri('big-blocks')]),
    ]);
    for (const [i, r] of jobs.entries()) {
      t.equal(r.code, 0, `client ${i}: ${r.stderr}`);
      t.notMatch(r.stdout + r.stderr, /Pattern verification failed|failed/i, `client ${i} verified`);
    }
    const img = await exportImage(m, 'web1', scratch);
    for (let i = 0; i < 4; i++) {
      const at = (64 + i * 4) * MiB;
      t.ok(img.subarray(at, at + MiB).equals(Buffer.alloc(MiB, 0x40 + i)), `client ${i}'s megabyte is in the vdisk`);
      t.ok(img.subarray(at + MiB, at + 4 * MiB).equals(Buffer.alloc(3 * MiB)), `nothing after client ${i}'s megabyte`);
    }
    const small = await exportImage(m, 'small', scratch);
    t.ok(small.subarray(8 * MiB, 9 * MiB).equals(Buffer.alloc(MiB, 0x50)), 'small got its writes');
    t.ok(small.subarray(9 * MiB, 16 * MiB - 700).equals(Buffer.alloc(7 * MiB - 700)), 'and nothing else there');
    const big = await exportImage(m, 'big-blocks', scratch);
    t.ok(big.subarray(8 * MiB, 9 * MiB).equals(Buffer.alloc(MiB, 0x51)), 'big-blocks got its writes');
    t.ok(big.subarray(9 * MiB, 32 * MiB - 700).equals(Buffer.alloc(23 * MiB - 700)), 'and nothing else there');
  });

  t.test('no server errors or warnings along the way', async (t) => {
    t.same(errors.map(String), []);
    t.same(warnings, []);
  });
});
