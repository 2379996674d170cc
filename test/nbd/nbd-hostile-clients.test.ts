/**
 * The NBD server against hostile and broken clients, driven over raw
 * `node:net` sockets: every case checks the exact bytes the protocol
 * (NetworkBlockDevice/nbd doc/proto.md) prescribes, or that the server hangs
 * up cleanly — and then that a second, well-behaved client still writes and
 * reads back a pattern. At the end: no unexpected server errors, no
 * connection left behind, every opened export released.
 */
import t, { type Test } from 'tap';
import { MemoryBlockDevice, NbdServer, type BlockDevice } from '../../nbd/index.ts';
import {
  CHUNK,
  CMD,
  ERR,
  FLAG_DONE,
  KiB,
  MiB,
  OPT,
  RawClient,
  REP,
  SIMPLE_MAGIC,
  SlowDevice,
  STRUCTURED_MAGIC,
  TFLAGS_RO,
  TFLAGS_RW,
  eventually,
  greet,
  infoData,
  infoExportBytes,
  openExport,
  option,
  optionHeader,
  optionReplyBytes,
  readChunk,
  readOptionReply,
  readSimpleReply,
  request,
  simpleReplyBytes,
  u16,
  u32,
  u64,
  wellBehaved,
  type Chunk,
} from './nbd-raw-client.ts';

const MAX = 64 * KiB; // the server's maxPayload in these tests
const DISK = 4 * MiB;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 17 + (i >> 8)) & 0xff;
  return b;
}

/** GO on an already-greeted client (flags sent); checks the exact INFO and ACK bytes. */
async function goOn(t: Tap, c: RawClient, name: string, size: number, flags: number): Promise<void> {
  c.write(option(OPT.GO, infoData(name)));
  t.same((await c.read(32)).toString('hex'), optionReplyBytes(OPT.GO, REP.INFO, infoExportBytes(BigInt(size), flags)).toString('hex'), `GO ${name}: NBD_INFO_EXPORT`);
  t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.GO, REP.ACK).toString('hex'), `GO ${name}: ACK`);
}

let cookieSeq = 0x1000n;
/** Write a pattern and read it back on a simple-reply connection. */
async function roundTrip(t: Tap, c: RawClient, offset: number, len = 4096): Promise<void> {
  const data = pattern(len, offset);
  const w = cookieSeq++;
  c.write(request({ type: CMD.WRITE, cookie: w, offset: BigInt(offset), length: len }, data));
  t.same((await c.read(16)).toString('hex'), simpleReplyBytes(w, 0).toString('hex'), 'write acknowledged');
  const r = cookieSeq++;
  c.write(request({ type: CMD.READ, cookie: r, offset: BigInt(offset), length: len }));
  t.same((await c.read(16)).toString('hex'), simpleReplyBytes(r, 0).toString('hex'), 'read acknowledged');
  t.ok((await c.read(len)).equals(data), 'read returns what was written');
}

/** An NBD_REPLY_TYPE_ERROR chunk with DONE, the given cookie and error, and a consistent message length. */
function checkErrorChunk(t: Tap, ch: Chunk, cookie: bigint, error: number): void {
  t.equal(ch.flags, FLAG_DONE, 'error chunk carries DONE');
  t.equal(ch.type, CHUNK.ERROR, 'NBD_REPLY_TYPE_ERROR');
  t.equal(ch.cookie, cookie, 'cookie echoed');
  t.ok(ch.payload.length >= 6, 'error payload at least 6 bytes');
  t.equal(ch.payload.readUInt32BE(0), error, `error ${error}`);
  t.equal(6 + ch.payload.readUInt16BE(4), ch.payload.length, 'message length matches the chunk length');
}

type Tap = Test;

t.test('NBD server vs hostile clients', async (t) => {
  const slow = new SlowDevice(1 * MiB, () => 1 + Math.floor(Math.random() * 20));
  const slowMany = new SlowDevice(4 * MiB, () => Math.floor(Math.random() * 4));
  const ro = new MemoryBlockDevice(1 * MiB, true);
  const roSeed = pattern(8192, 99);
  await ro.write(0, roSeed);
  const devices = new Map<string, BlockDevice>([
    ['disk', new MemoryBlockDevice(DISK)],
    ['health', new MemoryBlockDevice(1 * MiB)],
    ['ro', ro],
    ['slow', slow],
    ['slow-many', slowMany],
  ]);
  const opened = new Map<string, number>();
  const released = new Map<string, number>();
  const errors: unknown[] = [];
  const server = new NbdServer({
    exports: {
      list: () => [...devices.keys()].map((name) => ({ name })),
      open: (name) => {
        const d = devices.get(name) ?? null;
        if (d) opened.set(name, (opened.get(name) ?? 0) + 1);
        return d;
      },
      release: (name) => {
        released.set(name, (released.get(name) ?? 0) + 1);
      },
    },
    maxPayload: MAX,
    onError: (e) => errors.push(e),
  });
  const { port } = await server.listen(0);
  t.teardown(() => server.close());
  const clients: RawClient[] = [];
  const connect = async (): Promise<RawClient> => {
    const c = await greet(port);
    clients.push(c);
    return c;
  };
  const open = async (name: string, structured = false): Promise<RawClient> => {
    const o = await openExport(port, name, { structured });
    clients.push(o.c);
    return o.c;
  };
  /** After each case: the server has dropped every connection, and a fresh client works. */
  const stillServes = async (t: Tap): Promise<void> => {
    for (const c of clients.splice(0)) c.destroy();
    await eventually(() => server.connections === 0, 5000, 'the server to drop every connection');
    await wellBehaved(port);
    t.pass('the server dropped the connections and a well-behaved client still works');
  };
  const expectClose = async (t: Tap, c: RawClient, what: string): Promise<void> => {
    const rest = await c.closed();
    t.equal(rest.toString('hex'), '', `${what}: the server closes without sending anything more`);
  };

  t.test('handshake', async (t) => {
    t.test('unknown client flags: the server closes without a byte', async (t) => {
      for (const flags of [0x4, 0x8000_0000, 0xffff_ffff]) {
        const c = await connect();
        c.write(u32(flags));
        await expectClose(t, c, `client flags 0x${flags.toString(16)}`);
      }
      await stillServes(t);
    });

    t.test('bad option magic: the server closes', async (t) => {
      const c = await connect();
      c.write(u32(3));
      c.write(option(OPT.LIST, Buffer.alloc(0), Buffer.from('IHAVEOPX')));
      await expectClose(t, c, 'bad magic as the first option');
      const c2 = await connect();
      c2.write(u32(3));
      c2.write(option(0x4242, Buffer.from('xyz')));
      t.same((await c2.read(20)).toString('hex'), optionReplyBytes(0x4242, REP.ERR_UNSUP).toString('hex'), 'an unknown option first');
      c2.write(Buffer.concat([u64(0x49484156454f5055n), u32(OPT.GO), u32(0)]));
      await expectClose(t, c2, 'bad magic after a good option');
      await stillServes(t);
    });

    t.test('unknown and unsupported options get ERR_UNSUP; the client can still GO', async (t) => {
      const c = await connect();
      c.write(u32(3));
      const opts: Array<[number, Buffer]> = [
        [0x7fff_ffff, Buffer.from('junk data')],
        [0, Buffer.alloc(0)],
        [4, Buffer.alloc(0)], // NBD_OPT_PEEK_EXPORT (withdrawn)
        [0xffff_ffff, Buffer.alloc(300, 0xee)],
        [OPT.STARTTLS, Buffer.alloc(0)],
        [OPT.LIST_META_CONTEXT, Buffer.concat([u32(0), u32(0)])],
        [OPT.SET_META_CONTEXT, Buffer.concat([u32(4), Buffer.from('disk'), u32(1), u32(10), Buffer.from('base:alloc')])],
        [0x99, Buffer.alloc(64 * KiB, 0x49)], // exactly the size limit: still read and answered
      ];
      for (const [o, data] of opts) {
        c.write(option(o, data));
        t.same((await c.read(20)).toString('hex'), optionReplyBytes(o, REP.ERR_UNSUP).toString('hex'), `option ${o}: ERR_UNSUP`);
      }
      await goOn(t, c, 'disk', DISK, TFLAGS_RW);
      await roundTrip(t, c, 12345);
      await stillServes(t);
    });

    t.test('LIST: with data ERR_INVALID; without, one SERVER per export then ACK', async (t) => {
      const c = await connect();
      c.write(u32(3));
      c.write(option(OPT.LIST, Buffer.from('disk')));
      t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.LIST, REP.ERR_INVALID).toString('hex'), 'LIST with data');
      c.write(option(OPT.LIST));
      const names: string[] = [];
      for (;;) {
        const r = await readOptionReply(c);
        t.equal(r.option, OPT.LIST, 'reply is for LIST');
        if (r.type === REP.ACK) {
          t.equal(r.data.length, 0, 'ACK has no data');
          break;
        }
        t.equal(r.type, REP.SERVER, 'NBD_REP_SERVER');
        const n = r.data.readUInt32BE(0);
        t.ok(n <= r.data.length - 4, 'name length within the reply');
        names.push(r.data.subarray(4, 4 + n).toString('utf8'));
      }
      t.same(names.sort(), [...devices.keys()].sort(), 'every export listed once');
      await goOn(t, c, 'disk', DISK, TFLAGS_RW);
      await roundTrip(t, c, 20000);
      await stillServes(t);
    });

    t.test('INFO and GO for an unknown export: ERR_UNKNOWN and the session continues', async (t) => {
      const c = await connect();
      c.write(u32(3));
      for (const o of [OPT.INFO, OPT.GO]) {
        c.write(option(o, infoData('no-such-export')));
        const r = await readOptionReply(c);
        t.equal(r.option, o, 'reply names the option');
        t.equal(r.type, REP.ERR_UNKNOWN, 'NBD_REP_ERR_UNKNOWN');
      }
      c.write(option(OPT.INFO, infoData('disk', [1, 3, 0x7777])));
      const infos = new Map<number, string>();
      for (;;) {
        const r = await readOptionReply(c);
        t.equal(r.option, OPT.INFO);
        if (r.type === REP.ACK) break;
        t.equal(r.type, REP.INFO, 'NBD_REP_INFO');
        infos.set(r.data.readUInt16BE(0), r.data.toString('hex'));
      }
      t.equal(infos.get(0), infoExportBytes(BigInt(DISK), TFLAGS_RW).toString('hex'), 'NBD_INFO_EXPORT: size and flags');
      t.equal(infos.get(1), Buffer.concat([u16(1), Buffer.from('disk')]).toString('hex'), 'NBD_INFO_NAME');
      t.equal(infos.get(3), Buffer.concat([u16(3), u32(1), u32(4096), u32(MAX)]).toString('hex'), 'NBD_INFO_BLOCK_SIZE: 1 / 4096 / maxPayload');
      t.notOk(infos.has(0x7777), 'an unknown info request is ignored');
      c.write(option(OPT.INFO, infoData('ro')));
      t.same((await c.read(32)).toString('hex'), optionReplyBytes(OPT.INFO, REP.INFO, infoExportBytes(1n * BigInt(MiB), TFLAGS_RO)).toString('hex'), 'INFO ro: read-only flags');
      t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.INFO, REP.ACK).toString('hex'));
      await goOn(t, c, 'disk', DISK, TFLAGS_RW);
      await roundTrip(t, c, 30000);
      await stillServes(t);
    });

    t.test('malformed INFO/GO data: ERR_INVALID, then GO still works', async (t) => {
      const c = await connect();
      c.write(u32(3));
      const bad: Array<[string, Buffer]> = [
        ['name length beyond the data', Buffer.concat([u32(100), Buffer.from('disk'), u16(0)])],
        ['name length 2^32-1', Buffer.concat([u32(0xffff_ffff), u16(0)])],
        ['info count larger than sent', Buffer.concat([u32(4), Buffer.from('disk'), u16(2), u16(0)])],
        ['trailing bytes after the info list', Buffer.concat([u32(4), Buffer.from('disk'), u16(0), u16(1)])],
        ['shorter than 6 bytes', Buffer.from([0, 0, 0])],
        ['empty', Buffer.alloc(0)],
      ];
      for (const o of [OPT.INFO, OPT.GO]) {
        for (const [what, data] of bad) {
          c.write(option(o, data));
          t.same((await c.read(20)).toString('hex'), optionReplyBytes(o, REP.ERR_INVALID).toString('hex'), `${o === OPT.GO ? 'GO' : 'INFO'}: ${what}`);
        }
      }
      c.write(option(OPT.STRUCTURED_REPLY, Buffer.from([1])));
      t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.STRUCTURED_REPLY, REP.ERR_INVALID).toString('hex'), 'STRUCTURED_REPLY with data');
      await goOn(t, c, 'disk', DISK, TFLAGS_RW);
      await roundTrip(t, c, 40000);
      await stillServes(t);
    });

    t.test('oversized options: > 64 KiB is ERR_TOO_BIG (data skipped), > 16 MiB or EXPORT_NAME closes', async (t) => {
      const c = await connect();
      c.write(u32(3));
      // The skipped data contains what looks like an option: it must not be parsed.
      const fake = option(OPT.ABORT);
      const big = Buffer.alloc(64 * KiB + 1, 0x41);
      fake.copy(big, 100);
      c.write(option(OPT.LIST, big));
      t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.LIST, REP.ERR_TOO_BIG).toString('hex'), 'LIST of 64 KiB + 1');
      c.write(option(OPT.GO, Buffer.concat([infoData('disk'), Buffer.alloc(MiB)])));
      t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.GO, REP.ERR_TOO_BIG).toString('hex'), 'GO of 1 MiB');
      await goOn(t, c, 'disk', DISK, TFLAGS_RW);
      await roundTrip(t, c, 50000);

      const huge = await connect();
      huge.write(u32(3));
      huge.write(optionHeader(0x55, 16 * MiB + 1));
      await expectClose(t, huge, 'an option announcing 16 MiB + 1');
      const name = await connect();
      name.write(u32(3));
      name.write(optionHeader(OPT.EXPORT_NAME, 64 * KiB + 1));
      await expectClose(t, name, 'EXPORT_NAME longer than 64 KiB');
      await stillServes(t);
    });

    t.test('EXPORT_NAME for an unknown export: the server closes', async (t) => {
      const c = await connect();
      c.write(u32(3));
      c.write(option(OPT.EXPORT_NAME, Buffer.from('no-such-export')));
      await expectClose(t, c, 'unknown EXPORT_NAME');
      const c2 = await connect();
      c2.write(u32(1));
      c2.write(option(OPT.EXPORT_NAME));
      await expectClose(t, c2, 'empty EXPORT_NAME (no default export)');
      await stillServes(t);
    });

    t.test('ABORT: ACK, then the server closes', async (t) => {
      for (const data of [Buffer.alloc(0), Buffer.from('ignored data')]) {
        const c = await connect();
        c.write(u32(3));
        c.write(option(OPT.ABORT, data));
        t.same((await c.read(20)).toString('hex'), optionReplyBytes(OPT.ABORT, REP.ACK).toString('hex'), `ABORT with ${data.length} data bytes: ACK`);
        await expectClose(t, c, 'after ABORT');
      }
      await stillServes(t);
    });

    t.test('EXPORT_NAME reply: 134 bytes without NO_ZEROES, 10 with', async (t) => {
      for (const [flags, len] of [[0, 134], [1, 134], [3, 10]] as const) {
        const c = await connect();
        c.write(u32(flags));
        c.write(option(OPT.EXPORT_NAME, Buffer.from('disk')));
        const expected = Buffer.concat([u64(BigInt(DISK)), u16(TFLAGS_RW), Buffer.alloc(len - 10)]);
        t.same((await c.read(len)).toString('hex'), expected.toString('hex'), `client flags ${flags}: ${len}-byte reply`);
        // The very next bytes must be the reply to our first request: no more padding.
        c.write(request({ type: CMD.READ, cookie: 77n, offset: 0n, length: 8 }));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(77n, 0).toString('hex'), 'first reply right after the export reply');
        await c.read(8);
        await roundTrip(t, c, 60000 + flags);
      }
      await stillServes(t);
    });

    t.test('STRUCTURED_REPLY then GO: READ gets one OFFSET_DATA chunk with DONE, errors get ERROR chunks', async (t) => {
      const c = await open('disk', true);
      const data = pattern(5000, 5);
      c.write(request({ type: CMD.WRITE, cookie: 1n, offset: 70000n, length: data.length }, data));
      const h = await c.read(16);
      if (h.readUInt32BE(0) === SIMPLE_MAGIC) t.same(h.toString('hex'), simpleReplyBytes(1n, 0).toString('hex'), 'write: simple reply without error');
      else {
        const rest = await c.read(4);
        t.same(Buffer.concat([h, rest]).toString('hex'), Buffer.concat([u32(STRUCTURED_MAGIC), u16(FLAG_DONE), u16(CHUNK.NONE), u64(1n), u32(0)]).toString('hex'), 'write: NONE chunk with DONE');
      }
      const cookie = 0xfedcba9876543210n;
      c.write(request({ type: CMD.READ, cookie, offset: 70000n, length: data.length }));
      const expected = Buffer.concat([u32(STRUCTURED_MAGIC), u16(FLAG_DONE), u16(CHUNK.OFFSET_DATA), u64(cookie), u32(8 + data.length), u64(70000n), data]);
      t.ok((await c.read(expected.length)).equals(expected), 'READ: exactly one OFFSET_DATA chunk, DONE, offset and data');
      c.write(request({ type: CMD.READ, cookie: 3n, offset: BigInt(DISK - 10), length: 20 }));
      checkErrorChunk(t, await readChunk(c), 3n, ERR.EINVAL);
      c.write(request({ type: CMD.READ, cookie: 4n, offset: 0n, length: MAX + 1 }));
      checkErrorChunk(t, await readChunk(c), 4n, ERR.EINVAL);
      c.write(request({ type: 0x1234, cookie: 5n, offset: 0n, length: 0 }));
      checkErrorChunk(t, await readChunk(c), 5n, ERR.EINVAL);
      c.write(request({ type: CMD.WRITE, cookie: 6n, offset: BigInt(DISK), length: 4 }, Buffer.alloc(4)));
      checkErrorChunk(t, await readChunk(c), 6n, ERR.ENOSPC);
      c.write(request({ type: CMD.READ, cookie: 7n, offset: 70000n, length: 10 }));
      const ch = await readChunk(c);
      t.equal(ch.type, CHUNK.OFFSET_DATA, 'still serving after errors');
      t.ok(ch.payload.subarray(8).equals(data.subarray(0, 10)));
      await stillServes(t);
    });
  });

  t.test('transmission', async (t) => {
    t.test('bad request magic: replies to earlier requests, then close', async (t) => {
      const c = await open('disk');
      const data = pattern(512, 1);
      const bad = request({ type: CMD.READ, cookie: 2n, offset: 0n, length: 512 });
      bad.writeUInt32BE(0x25609514, 0); // a reserved magic value
      c.write(Buffer.concat([request({ type: CMD.WRITE, cookie: 1n, offset: 0n, length: 512 }, data), bad]));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(1n, 0).toString('hex'), 'the write before it is answered');
      await expectClose(t, c, 'bad request magic');
      const c2 = await open('disk');
      c2.write(Buffer.alloc(28, 0xff));
      await expectClose(t, c2, 'all-ones request');
      await stillServes(t);
    });

    t.test('unknown and unsupported commands: EINVAL, the connection stays usable', async (t) => {
      const c = await open('disk');
      for (const type of [CMD.CACHE, CMD.BLOCK_STATUS, CMD.RESIZE, 9, 0x7fff, 0xffff]) {
        const cookie = BigInt(1000 + type);
        c.write(request({ type, cookie, offset: 4096n, length: 512 }));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(cookie, ERR.EINVAL).toString('hex'), `command ${type}: EINVAL`);
      }
      await roundTrip(t, c, 80000);
      await stillServes(t);
    });

    t.test('out of range: READ EINVAL, WRITE/WRITE_ZEROES ENOSPC (payload consumed)', async (t) => {
      const c = await open('disk');
      const cases: Array<[string, number, bigint, number, number]> = [
        ['read straddling the end', CMD.READ, BigInt(DISK - 512), 1024, ERR.EINVAL],
        ['read at the end', CMD.READ, BigInt(DISK), 1, ERR.EINVAL],
        ['read at 2^64-1 (offset+length overflows 64 bits)', CMD.READ, 0xffff_ffff_ffff_ffffn, 1, ERR.EINVAL],
        ['write straddling the end', CMD.WRITE, BigInt(DISK - 512), 1024, ERR.ENOSPC],
        ['write at 2^64-512', CMD.WRITE, 0xffff_ffff_ffff_fe00n, 512, ERR.ENOSPC],
        ['write zeroes past the end', CMD.WRITE_ZEROES, BigInt(DISK - 1), 2, ERR.ENOSPC],
      ];
      let cookie = 500n;
      for (const [what, type, offset, length, err] of cases) {
        cookie++;
        c.write(request({ type, cookie, offset, length }, type === CMD.WRITE ? Buffer.alloc(length, 0x33) : undefined));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(cookie, err).toString('hex'), `${what}: error ${err}`);
      }
      c.write(request({ type: CMD.READ, cookie: 600n, offset: BigInt(DISK - 512), length: 512 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(600n, 0).toString('hex'), 'a read ending exactly at the end succeeds');
      t.ok((await c.read(512)).equals(Buffer.alloc(512)), 'and the refused writes left no trace');
      await roundTrip(t, c, DISK - 4096);
      await stillServes(t);
    });

    t.test('READ larger than the max payload: EINVAL and no data', async (t) => {
      const c = await open('disk');
      for (const length of [MAX + 1, 0xffff_ffff]) {
        c.write(request({ type: CMD.READ, cookie: BigInt(length), offset: 0n, length }));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(BigInt(length), ERR.EINVAL).toString('hex'), `read of ${length}`);
      }
      c.write(request({ type: CMD.READ, cookie: 9n, offset: 0n, length: MAX }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(9n, 0).toString('hex'), 'a read of exactly the max payload succeeds');
      await c.read(MAX);
      await roundTrip(t, c, 90000);
      await stillServes(t);
    });

    t.test('WRITE larger than the max payload (< 4x): payload discarded, EINVAL, connection usable', async (t) => {
      const c = await open('disk');
      const len = 2 * MAX + 3;
      const payload = Buffer.alloc(len, 0xaa);
      // Something that looks like a DISC request inside the payload: must be skipped, not parsed.
      request({ type: CMD.DISC, cookie: 1n, offset: 0n, length: 0 }).copy(payload, MAX);
      const at = 3 * MiB;
      c.write(request({ type: CMD.WRITE, cookie: 11n, offset: BigInt(at), length: len }, payload));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(11n, ERR.EINVAL).toString('hex'), 'EINVAL');
      c.write(request({ type: CMD.READ, cookie: 12n, offset: BigInt(at), length: 4096 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(12n, 0).toString('hex'), 'next request parsed correctly');
      t.ok((await c.read(4096)).equals(Buffer.alloc(4096)), 'nothing of the refused write was stored');
      await roundTrip(t, c, 100000);
      await stillServes(t);
    });

    t.test('zero-length requests: READ EINVAL; WRITE/TRIM/WRITE_ZEROES answered without disconnecting', async (t) => {
      const c = await open('disk');
      c.write(request({ type: CMD.READ, cookie: 21n, offset: 0n, length: 0 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(21n, ERR.EINVAL).toString('hex'), 'zero-length read');
      for (const type of [CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]) {
        c.write(request({ type, cookie: BigInt(30 + type), offset: 512n, length: 0 }));
        const r = await readSimpleReply(c);
        t.equal(r.cookie, BigInt(30 + type), `zero-length command ${type}: cookie echoed`);
        t.ok(r.error === 0 || r.error === ERR.EINVAL, `zero-length command ${type}: success or EINVAL (${r.error})`);
      }
      await roundTrip(t, c, 110000);
      await stillServes(t);
    });

    t.test('read-only export: WRITE/TRIM/WRITE_ZEROES EPERM, READ works', async (t) => {
      const o = await openExport(port, 'ro');
      clients.push(o.c);
      const c = o.c;
      t.equal(o.flags, TFLAGS_RO, 'READ_ONLY advertised, TRIM/WRITE_ZEROES not');
      c.write(request({ type: CMD.WRITE, cookie: 41n, offset: 0n, length: 4096 }, Buffer.alloc(4096, 0x77)));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(41n, ERR.EPERM).toString('hex'), 'WRITE: EPERM');
      c.write(request({ type: CMD.WRITE, cookie: 42n, offset: 0n, length: 1, flags: 1 }, Buffer.alloc(1, 0x77)));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(42n, ERR.EPERM).toString('hex'), 'WRITE with FUA: EPERM');
      c.write(request({ type: CMD.TRIM, cookie: 43n, offset: 0n, length: 4096 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(43n, ERR.EPERM).toString('hex'), 'TRIM: EPERM');
      c.write(request({ type: CMD.WRITE_ZEROES, cookie: 44n, offset: 0n, length: 4096 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(44n, ERR.EPERM).toString('hex'), 'WRITE_ZEROES: EPERM');
      c.write(request({ type: CMD.FLUSH, cookie: 45n, offset: 0n, length: 0 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(45n, 0).toString('hex'), 'FLUSH: ok');
      c.write(request({ type: CMD.READ, cookie: 46n, offset: 0n, length: 8192 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(46n, 0).toString('hex'), 'READ: ok');
      t.ok((await c.read(8192)).equals(roSeed), 'the content is untouched');
      await stillServes(t);
    });

    t.test('TRIM and WRITE_ZEROES: the ranges read back as zero, the rest intact', async (t) => {
      const c = await open('disk');
      const base = 1 * MiB;
      const len = 256 * KiB;
      const shadow = pattern(len, 3);
      for (let i = 0; i < len; i += MAX) {
        c.write(request({ type: CMD.WRITE, cookie: BigInt(i), offset: BigInt(base + i), length: MAX }, shadow.subarray(i, i + MAX)));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(BigInt(i), 0).toString('hex'));
      }
      const ops: Array<[number, number, number, number]> = [
        [CMD.TRIM, 1000, 70000, 0], // partial chunks across a 64 KiB boundary
        [CMD.WRITE_ZEROES, 128 * KiB, 64 * KiB, 0], // one whole aligned chunk
        [CMD.WRITE_ZEROES, 200000, 100, 1], // with FUA
        [CMD.TRIM, 250000, 1, 0],
      ];
      let cookie = 900n;
      for (const [type, off, n, flags] of ops) {
        c.write(request({ type, cookie: ++cookie, offset: BigInt(base + off), length: n, flags }));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(cookie, 0).toString('hex'), `${type === CMD.TRIM ? 'TRIM' : 'WRITE_ZEROES'} ${off}+${n}`);
        shadow.fill(0, off, off + n);
      }
      for (let i = 0; i < len; i += MAX) {
        c.write(request({ type: CMD.READ, cookie: ++cookie, offset: BigInt(base + i), length: MAX }));
        t.same((await c.read(16)).toString('hex'), simpleReplyBytes(cookie, 0).toString('hex'));
        t.ok((await c.read(MAX)).equals(shadow.subarray(i, i + MAX)), `bytes ${i}..${i + MAX} as expected`);
      }
      await stillServes(t);
    });

    t.test('FLUSH after pipelined writes: answered after them, device flushed after they completed', async (t) => {
      const c = await open('slow');
      const n = 16;
      const reqs: Buffer[] = [];
      for (let i = 0; i < n; i++) reqs.push(request({ type: CMD.WRITE, cookie: BigInt(100 + i), offset: BigInt(i * 4096), length: 4096, flags: i % 3 === 0 ? 1 : 0 }, pattern(4096, i)));
      reqs.push(request({ type: CMD.FLUSH, cookie: 999n, offset: 0n, length: 0 }));
      c.write(Buffer.concat(reqs));
      const order: bigint[] = [];
      for (let i = 0; i <= n; i++) {
        const r = await readSimpleReply(c);
        t.equal(r.error, 0);
        order.push(r.cookie);
      }
      t.equal(order[n], 999n, 'the FLUSH reply comes after every write reply');
      t.same([...order].sort((a, b) => (a < b ? -1 : 1)), [...Array.from({ length: n }, (_, i) => BigInt(100 + i)), 999n], 'each cookie answered once');
      t.same(slow.writesDoneAtFlush, [n], 'flush() ran after all 16 writes had completed');
      for (let i = 0; i < n; i++) {
        c.write(request({ type: CMD.READ, cookie: BigInt(200 + i), offset: BigInt(i * 4096), length: 4096 }));
        const r = await readSimpleReply(c, 4096);
        t.ok(r.cookie === BigInt(200 + i) && r.data.equals(pattern(4096, i)), `block ${i} reads back`);
      }
      await stillServes(t);
    });

    t.test('many pipelined requests with distinct cookies: each answered exactly once, with its own result', async (t) => {
      const c = await open('slow-many');
      // Region A (read-only during the batch): known pattern. Region B: written by the batch.
      const A = 0;
      const B = 2 * MiB;
      const aData = pattern(256 * KiB, 8);
      for (let i = 0; i < aData.length; i += MAX) {
        c.write(request({ type: CMD.WRITE, cookie: 1n, offset: BigInt(A + i), length: MAX }, aData.subarray(i, i + MAX)));
        t.equal((await readSimpleReply(c)).error, 0);
      }
      type Expect = { kind: 'read'; off: number; len: number } | { kind: 'ok' } | { kind: 'err'; err: number };
      const expect = new Map<bigint, Expect>();
      const cookies = new Set<bigint>([0n, 0xffff_ffff_ffff_ffffn]);
      while (cookies.size < 600) cookies.add(BigInt.asUintN(64, BigInt(Math.floor(Math.random() * 2 ** 53)) * 2654435761n));
      const batch: Buffer[] = [];
      const bWrites: Array<[number, Buffer]> = [];
      let i = 0;
      for (const cookie of cookies) {
        const k = i++ % 6;
        if (k === 0 || k === 1) {
          const off = A + Math.floor(Math.random() * (aData.length - 2048));
          const len = 1 + Math.floor(Math.random() * 2048);
          batch.push(request({ type: CMD.READ, cookie, offset: BigInt(off), length: len }));
          expect.set(cookie, { kind: 'read', off, len });
        } else if (k === 2) {
          const off = B + bWrites.length * 1024;
          const d = pattern(1024, bWrites.length + 1000);
          bWrites.push([off, d]);
          batch.push(request({ type: CMD.WRITE, cookie, offset: BigInt(off), length: 1024 }, d));
          expect.set(cookie, { kind: 'ok' });
        } else if (k === 3) {
          batch.push(request({ type: 0x40 + (i % 50), cookie, offset: 0n, length: 0 }));
          expect.set(cookie, { kind: 'err', err: ERR.EINVAL });
        } else if (k === 4) {
          batch.push(request({ type: CMD.READ, cookie, offset: BigInt(DISK), length: 512 }));
          expect.set(cookie, { kind: 'err', err: ERR.EINVAL });
        } else {
          batch.push(request({ type: CMD.FLUSH, cookie, offset: 0n, length: 0 }));
          expect.set(cookie, { kind: 'ok' });
        }
      }
      c.write(Buffer.concat(batch));
      const seen = new Set<bigint>();
      let problems = 0;
      for (let n = 0; n < cookies.size; n++) {
        const h = await c.read(16);
        t.equal(h.readUInt32BE(0), SIMPLE_MAGIC);
        const cookie = h.readBigUInt64BE(8);
        const e = expect.get(cookie);
        if (!e || seen.has(cookie)) {
          t.fail(`reply for ${e ? 'an already answered' : 'an unknown'} cookie ${cookie}`);
          break;
        }
        seen.add(cookie);
        const err = h.readUInt32BE(4);
        if (e.kind === 'read') {
          if (err !== 0) problems++;
          else if (!(await c.read(e.len)).equals(aData.subarray(e.off - A, e.off - A + e.len))) problems++;
        } else if (err !== (e.kind === 'ok' ? 0 : e.err)) problems++;
      }
      t.equal(seen.size, cookies.size, 'every cookie answered');
      t.equal(problems, 0, 'every reply carries the right error and data');
      for (const [off, d] of bWrites.slice(0, 20)) {
        c.write(request({ type: CMD.READ, cookie: 5n, offset: BigInt(off), length: d.length }));
        t.ok((await readSimpleReply(c, d.length)).data.equals(d), `pipelined write at ${off} stored`);
      }
      c.write(request({ type: CMD.DISC, cookie: 6n, offset: 0n, length: 0 }));
      await expectClose(t, c, 'DISC after the batch');
      await stillServes(t);
    });

    t.test('DISC: in-flight requests are answered, then the server closes', async (t) => {
      const c = await open('slow');
      const d = pattern(8192, 4);
      c.write(Buffer.concat([
        request({ type: CMD.WRITE, cookie: 1n, offset: 500000n, length: d.length }, d),
        request({ type: CMD.READ, cookie: 2n, offset: 0n, length: 4096 }),
        request({ type: CMD.WRITE_ZEROES, cookie: 3n, offset: 600000n, length: 4096 }),
        request({ type: CMD.FLUSH, cookie: 4n, offset: 0n, length: 0 }),
        request({ type: CMD.DISC, cookie: 5n, offset: 0n, length: 0 }),
      ]));
      const got = new Set<bigint>();
      for (let i = 0; i < 4; i++) {
        const h = await c.read(16);
        t.equal(h.readUInt32BE(0), SIMPLE_MAGIC);
        t.equal(h.readUInt32BE(4), 0, 'no error');
        const cookie = h.readBigUInt64BE(8);
        got.add(cookie);
        if (cookie === 2n) t.ok((await c.read(4096)).equals(pattern(4096, 0)), 'READ data intact');
      }
      t.same([...got].sort(), [1n, 2n, 3n, 4n], 'all four in-flight requests answered');
      await expectClose(t, c, 'after DISC');
      const check = await open('slow');
      check.write(request({ type: CMD.READ, cookie: 1n, offset: 500000n, length: d.length }));
      t.ok((await readSimpleReply(check, d.length)).data.equals(d), 'the write before DISC was performed');
      await stillServes(t);
    });

    // Fails while the server's sockets are created with allowHalfOpen false: Node then ends our
    // write side on the client's FIN and the replies of slow in-flight requests are dropped.
    t.test('DISC then a half-close (shutdown SHUT_WR): in-flight requests are still answered', async (t) => {
      // proto.md on NBD_CMD_DISC: "The server MUST handle all outstanding requests".
      // A client that half-closes its side after DISC still reads the replies it is owed.
      const c = await open('slow');
      c.write(Buffer.concat([
        request({ type: CMD.WRITE, cookie: 1n, offset: 700000n, length: 4 }, Buffer.from('abcd')),
        request({ type: CMD.FLUSH, cookie: 2n, offset: 0n, length: 0 }),
        request({ type: CMD.DISC, cookie: 3n, offset: 0n, length: 0 }),
      ]));
      c.socket.end();
      const rest = await c.closed();
      t.same(rest.toString('hex'), Buffer.concat([simpleReplyBytes(1n, 0), simpleReplyBytes(2n, 0)]).toString('hex'), 'the WRITE and then the FLUSH are answered before the close');
      await stillServes(t);
    });

    // Fails while TRIM shares WRITE_ZEROES's ENOSPC for out-of-range requests.
    t.test('TRIM beyond the end: EINVAL (proto.md: "NBD_EINVAL if it receives a read or trim request including one or more sectors beyond the size")', async (t) => {
      const c = await open('disk');
      c.write(request({ type: CMD.TRIM, cookie: 71n, offset: BigInt(DISK - 512), length: 1024 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(71n, ERR.EINVAL).toString('hex'), 'TRIM straddling the end: EINVAL');
      await stillServes(t);
    });

    // Fails while the server ignores command flags it does not know.
    t.test('unknown command flags: EINVAL (proto.md: "SHOULD return NBD_EINVAL if it receives an unknown command flag")', async (t) => {
      const c = await open('disk');
      c.write(request({ type: CMD.READ, cookie: 81n, offset: 0n, length: 512, flags: 0x8000 }));
      t.same((await c.read(16)).toString('hex'), simpleReplyBytes(81n, ERR.EINVAL).toString('hex'), 'READ with flag bit 15: EINVAL');
      await stillServes(t);
    });
  });

  t.test('truncated packets and vanishing clients', async (t) => {
    t.test('half a request header, then the client goes away', async (t) => {
      for (const how of ['end', 'destroy'] as const) {
        const c = await open('disk');
        c.write(request({ type: CMD.READ, cookie: 1n, offset: 0n, length: 512 }).subarray(0, 14));
        if (how === 'end') {
          c.socket.end();
          await expectClose(t, c, 'half a header then FIN');
        } else c.destroy();
      }
      await stillServes(t);
    });

    t.test('half a WRITE payload, then the client goes away: nothing of it is stored', async (t) => {
      const at = 3 * MiB + 512 * KiB;
      const before = await open('disk');
      before.write(request({ type: CMD.WRITE, cookie: 1n, offset: BigInt(at), length: 8192 }, Buffer.alloc(8192, 0x5a)));
      t.equal((await readSimpleReply(before)).error, 0);
      for (const how of ['end', 'destroy'] as const) {
        const c = await open('disk');
        c.write(request({ type: CMD.WRITE, cookie: 2n, offset: BigInt(at), length: 8192 }, Buffer.alloc(4000, 0x11)));
        if (how === 'end') {
          c.socket.end();
          await expectClose(t, c, 'half a payload then FIN');
        } else c.destroy();
      }
      await eventually(() => server.connections === 1, 5000, 'the truncated connections to be dropped');
      before.write(request({ type: CMD.READ, cookie: 3n, offset: BigInt(at), length: 8192 }));
      t.ok((await readSimpleReply(before, 8192)).data.equals(Buffer.alloc(8192, 0x5a)), 'the region still holds the old data');
      await stillServes(t);
    });

    t.test('clients vanishing at every point of the handshake', async (t) => {
      const steps: Array<[string, Buffer]> = [
        ['right after the greeting', Buffer.alloc(0)],
        ['mid client flags', Buffer.from([0, 0])],
        ['mid option header', Buffer.concat([u32(3), optionHeader(OPT.GO, 20).subarray(0, 10)])],
        ['mid GO data', Buffer.concat([u32(3), optionHeader(OPT.GO, 100), infoData('disk').subarray(0, 5)])],
        ['mid EXPORT_NAME data', Buffer.concat([u32(3), optionHeader(OPT.EXPORT_NAME, 10), Buffer.from('dis')])],
        ['while an oversized option is skipped', Buffer.concat([u32(3), optionHeader(0x77, MiB), Buffer.alloc(1000)])],
        ['with LIST replies unread', Buffer.concat([u32(3), option(OPT.LIST), option(OPT.LIST), option(OPT.LIST)])],
        ['after GO, before reading the replies', Buffer.concat([u32(3), option(OPT.GO, infoData('disk'))])],
      ];
      for (const [what, bytes] of steps) {
        for (const how of ['end', 'destroy'] as const) {
          const c = await connect();
          if (bytes.length) c.write(bytes);
          if (how === 'end') {
            c.socket.end();
            await c.closed().catch(() => Buffer.alloc(0));
            t.ok(c.ended, `${what} (FIN): the server closed too`);
          } else c.destroy();
        }
        await eventually(() => server.connections === 0, 5000, `the server to drop a client that vanished ${what}`);
        t.pass(`vanished ${what}: connection dropped`);
      }
      await stillServes(t);
    });
  });

  t.test('no unexpected server errors; every opened export was released', async (t) => {
    for (const c of clients.splice(0)) c.destroy();
    await eventually(() => server.connections === 0, 5000, 'all connections to close');
    await eventually(() => [...opened].every(([n, k]) => released.get(n) === k), 5000, 'every open to be released');
    t.same(errors, [], 'onError never called');
    t.same(Object.fromEntries(released), Object.fromEntries(opened), 'release() once per open()');
  });
});

t.test('handshake timeout', async (t) => {
  const errors: unknown[] = [];
  const timeout = 250;
  const devices = new Map<string, BlockDevice>([['health', new MemoryBlockDevice(MiB)]]);
  const server = new NbdServer({ exports: { list: () => [{ name: 'health' }], open: (n) => devices.get(n) ?? null }, handshakeTimeoutMs: timeout, onError: (e) => errors.push(e) });
  const { port } = await server.listen(0);
  t.teardown(() => server.close());

  t.test('a client that says nothing is closed after the timeout', async (t) => {
    const start = Date.now();
    const c = await greet(port);
    const rest = await c.closed(timeout + 3000);
    const elapsed = Date.now() - start;
    t.equal(rest.length, 0, 'nothing sent after the greeting');
    t.ok(elapsed >= timeout - 20, `not before the timeout (${elapsed} ms)`);
  });

  t.test('a client that keeps haggling but never picks an export is closed', async (t) => {
    const start = Date.now();
    const c = await greet(port);
    c.write(u32(3));
    let lists = 0;
    // Keep the handshake busy with LISTs until the server hangs up.
    while (!c.ended) {
      c.write(option(OPT.LIST));
      try {
        for (;;) {
          const r = await readOptionReply(c);
          if (r.type === REP.ACK) break;
        }
        lists++;
      } catch {
        break;
      }
      await c.until(() => c.ended, 20, 'a pause between LISTs').catch(() => undefined);
    }
    const elapsed = Date.now() - start;
    t.ok(lists >= 1, `${lists} LISTs answered before the close`);
    t.ok(elapsed >= timeout - 20 && elapsed < timeout + 3000, `closed by the timeout (${elapsed} ms)`);
  });

  t.test('a client that finished the handshake is not cut off by it', async (t) => {
    const o = await openExport(port, 'health');
    await t.rejects(o.c.until(() => o.c.ended, timeout * 3, 'the server to close'), 'still open after three timeouts');
    o.c.write(request({ type: CMD.READ, cookie: 1n, offset: 0n, length: 16 }));
    t.equal((await readSimpleReply(o.c, 16)).error, 0, 'and still serving');
    o.c.destroy();
    await wellBehaved(port);
    await eventually(() => server.connections === 0, 5000, 'connections to close');
    t.same(errors, []);
  });
});

// Fails while #transmission ignores socket backpressure (socket.write's return value / writableNeedDrain).
t.test('a client that never reads its replies cannot make the server buffer without bound', async (t) => {
  // 400 READs of 256 KiB = 100 MiB of replies. The client reads none of them.
  // A server that respects socket backpressure stops taking requests once a
  // bounded amount of reply data is queued; we allow 32 MiB (128 reads).
  const maxPayload = 256 * KiB;
  let reads = 0;
  const inner = new MemoryBlockDevice(MiB);
  const counting: BlockDevice = {
    size: inner.size,
    readOnly: false,
    blockSize: 4096,
    read: (o, l) => {
      reads++;
      return inner.read(o, l);
    },
    write: (o, d) => inner.write(o, d),
    flush: () => inner.flush(),
    trim: (o, l) => inner.trim(o, l),
    writeZeroes: (o, l) => inner.writeZeroes(o, l),
  };
  const errors: unknown[] = [];
  const server = new NbdServer({
    exports: { list: () => [{ name: 'health' }], open: (n) => (n === 'big' ? counting : n === 'health' ? new MemoryBlockDevice(MiB) : null) },
    maxPayload,
    maxInFlight: 8,
    onError: (e) => errors.push(e),
  });
  const { port } = await server.listen(0);
  t.teardown(() => server.close());
  const { c } = await openExport(port, 'big');
  c.socket.pause();
  const n = 400;
  const reqs: Buffer[] = [];
  for (let i = 0; i < n; i++) reqs.push(request({ type: CMD.READ, cookie: BigInt(i), offset: 0n, length: maxPayload }));
  c.write(Buffer.concat(reqs));
  await eventually(() => reads >= n, 1500, 'the server to serve every read').catch(() => undefined);
  t.ok(reads <= 128, `server served ${reads} of ${n} reads (${(reads * maxPayload) / MiB} MiB) to a client that reads nothing`);
  c.destroy();
  await eventually(() => server.connections === 0, 5000, 'the connection to drop');
  await wellBehaved(port);
  t.same(errors, []);
});
