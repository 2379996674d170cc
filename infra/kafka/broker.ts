/**
 * A real Apache Kafka broker (4.1.1, single-node KRaft) for tests, benchmarks
 * and development (`npm run kafka:up`), run from the jars that Maven resolves
 * from infra/kafka/pom.xml into a cache directory.
 *
 *   const lib = await ensureKafkaInstalled();          // Maven once, then cached
 *   const b = await startBroker();                      // free loopback ports, temp data dir
 *   ... b.bootstrap ('127.0.0.1:PORT') ...
 *   await b.kill('SIGKILL'); await b.restart();         // crash and recover
 *   await b.stop({ removeData: true });
 *
 * Durability note. A single node cannot survive power loss whatever it does:
 * Kafka acknowledges acks=all writes once they are in the leader's (and the
 * in-sync followers') page cache and relies on replication, not fsync, for
 * durability (production: replication 3, min.insync.replicas=2, see
 * docs/kafka.md). What this broker must survive is a SIGKILL of its process:
 * the page cache belongs to the kernel, not the process, so everything
 * acknowledged is still in the segment files after kill -9, and Kafka's log
 * recovery on the next start (no clean-shutdown marker) revalidates them. So
 * no flush settings are set here (log.flush.interval.messages stays at its
 * default, Long.MAX_VALUE); a test that wants an fsync per message can pass
 * `config: { 'log.flush.interval.messages': 1 }`.
 *
 * Lifetime. A broker started without `detached` can never outlive this
 * process: it is SIGKILLed on process 'exit' and on SIGINT/SIGTERM/SIGHUP, and
 * a tiny watchdog shell whose stdin is a pipe from this process kills it when
 * that pipe closes, which also covers this process being SIGKILLed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  fstatSync,
} from 'node:fs';
import { createServer, connect } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const KAFKA_VERSION = '4.1.1';
export const INSTALL_HINT = 'Kafka tests need Java 17+ and Maven: apt-get install -y openjdk-17-jre-headless maven';

const HERE = fileURLToPath(new URL('.', import.meta.url));
export const POM_FILE = join(HERE, 'pom.xml');
export const LOG4J_BROKER_CONFIG = join(HERE, 'log4j2.xml');
export const LOG4J_TOOLS_CONFIG = join(HERE, 'log4j2-tools.xml');

const MARKER = '.zos-complete';
const READY_LINE = 'Kafka Server started';

// ---------------------------------------------------------------------------
// Installation
// ---------------------------------------------------------------------------

/** Where the jars live: $ZOS_KAFKA_HOME or ~/.cache/zos/kafka-4.1.1. */
export function kafkaHome(): string {
  return process.env.ZOS_KAFKA_HOME || join(homedir(), '.cache', 'zos', `kafka-${KAFKA_VERSION}`);
}

export function kafkaLibDir(): string {
  return join(kafkaHome(), 'lib');
}

function pomDigest(): string {
  return createHash('sha256').update(readFileSync(POM_FILE)).digest('hex');
}

/** True when the cache holds a complete copy of the jars for the current pom.xml. */
export function kafkaInstalled(): boolean {
  const marker = join(kafkaLibDir(), MARKER);
  try {
    return readFileSync(marker, 'utf8').trim() === pomDigest();
  } catch {
    return false;
  }
}

/** The major version of `java` on PATH, or undefined when there is none. */
export function javaMajorVersion(): number | undefined {
  const r = spawnSync('java', ['-version'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error || r.status !== 0) return undefined;
  const m = /version "(\d+)(?:\.(\d+))?/.exec(`${r.stderr}${r.stdout}`);
  if (!m) return undefined;
  const major = Number(m[1]);
  return major === 1 ? Number(m[2]) : major; // "1.8.0" style
}

export function mavenPresent(): boolean {
  const r = spawnSync('mvn', ['-v'], { encoding: 'utf8', timeout: 60_000 });
  return !r.error && r.status === 0;
}

/** Java 17+ is there (and Maven too, unless the jars are already cached). */
export function checkKafkaPrerequisites(): { ok: boolean; why: string } {
  const java = javaMajorVersion();
  if (java === undefined) return { ok: false, why: `no java on PATH. ${INSTALL_HINT}` };
  if (java < 17) return { ok: false, why: `java ${java} is too old for Kafka ${KAFKA_VERSION}. ${INSTALL_HINT}` };
  if (kafkaInstalled()) return { ok: true, why: `java ${java}, Kafka jars cached in ${kafkaLibDir()}` };
  if (!mavenPresent()) return { ok: false, why: `no mvn on PATH (needed once to fetch the Kafka jars). ${INSTALL_HINT}` };
  return { ok: true, why: `java ${java} and Maven present; Kafka jars will be fetched into ${kafkaLibDir()}` };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A lock directory holding the owner's pid; a lock whose owner is dead is taken over. */
async function withLock<T>(dir: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner = NaN;
      try {
        owner = Number(readFileSync(join(dir, 'pid'), 'utf8'));
      } catch {
        // being created or removed right now
      }
      const age = (() => {
        try {
          return Date.now() - statSync(dir).mtimeMs;
        } catch {
          return 0;
        }
      })();
      if ((Number.isInteger(owner) && owner > 0 && !pidAlive(owner)) || (Number.isNaN(owner) && age > 10_000)) {
        rmSync(dir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for the lock ${dir} (held by pid ${owner})`);
      await sleep(250);
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), out }));
  });
}

/**
 * Resolve the broker's jars with Maven into kafkaLibDir() unless a complete
 * copy (marker file holding pom.xml's digest) is already there. Safe to call
 * from several processes at once. Returns the lib directory.
 */
export async function ensureKafkaInstalled(opts: { log?: (line: string) => void } = {}): Promise<string> {
  const lib = kafkaLibDir();
  if (kafkaInstalled()) return lib;
  const pre = checkKafkaPrerequisites();
  if (!pre.ok) throw new Error(`cannot install Kafka ${KAFKA_VERSION}: ${pre.why}`);
  const home = kafkaHome();
  mkdirSync(home, { recursive: true });
  return withLock(join(home, '.install-lock'), 15 * 60_000, async () => {
    if (kafkaInstalled()) return lib; // another process finished while we waited
    const tmp = join(home, `lib.tmp-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    const started = Date.now();
    opts.log?.(`resolving Kafka ${KAFKA_VERSION} jars with Maven into ${lib} ...`);
    const r = await run('mvn', ['-q', '-B', '-f', POM_FILE, 'dependency:copy-dependencies', `-DoutputDirectory=${tmp}`]);
    if (r.code !== 0) {
      rmSync(tmp, { recursive: true, force: true });
      throw new Error(`mvn dependency:copy-dependencies failed (exit ${r.code}) for ${POM_FILE}:\n${r.out.slice(-4000)}`);
    }
    const jars = readdirSync(tmp).filter((f) => f.endsWith('.jar'));
    if (!jars.some((f) => f.startsWith(`kafka_2.13-${KAFKA_VERSION}`))) {
      throw new Error(`Maven finished but ${tmp} has no kafka_2.13-${KAFKA_VERSION}.jar:\n${r.out.slice(-4000)}`);
    }
    writeFileSync(join(tmp, MARKER), `${pomDigest()}\n`);
    const old = join(home, `lib.old-${process.pid}`);
    if (existsSync(lib)) renameSync(lib, old);
    renameSync(tmp, lib);
    rmSync(old, { recursive: true, force: true });
    const mb = jars.reduce((n, f) => n + statSync(join(lib, f)).size, 0) / 1e6;
    opts.log?.(`Kafka jars ready: ${jars.length} jars, ${mb.toFixed(1)} MB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return lib;
  });
}

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

export interface StartBrokerOptions {
  /**
   * Data directory (server.properties, kafka-logs/, server.log, console.out).
   * Default: a new temp dir, removed when this process exits.
   */
  dataDir?: string;
  /** PLAINTEXT port on 127.0.0.1. Default: a free one. */
  port?: number;
  /** CONTROLLER port on 127.0.0.1. Default: a free one. */
  controllerPort?: number;
  /** JVM heap in MiB (-Xmx and -Xms). Default 512. */
  heapMb?: number;
  /** Start the JVM in its own session, not tied to this process (for `npm run kafka:up`). */
  detached?: boolean;
  /** Extra or overriding server.properties entries. */
  config?: Record<string, string | number | boolean>;
  /** How long to wait for "Kafka Server started". Default 90 s. */
  readyTimeoutMs?: number;
}

export interface Broker {
  /** '127.0.0.1:PORT' */
  readonly bootstrap: string;
  readonly port: number;
  readonly controllerPort: number;
  readonly dataDir: string;
  /** pid of the running JVM (changes on restart). */
  readonly pid: number;
  /** Send a signal (default SIGKILL) and wait until the JVM has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start again on the same ports and data dir, without reformatting; waits until ready. Stops it first if running. */
  restart(): Promise<void>;
  /** SIGTERM (controlled shutdown), SIGKILL after `timeoutMs` (default 30 s); optionally remove the data dir. */
  stop(opts?: { removeData?: boolean; timeoutMs?: number }): Promise<void>;
  /** The last `n` lines of server.log (default 40). */
  logTail(n?: number): string;
}

/** Two distinct free TCP ports on 127.0.0.1 (bind port 0, read it, close). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => {
      return new Promise<import('node:net').Server>((resolve, reject) => {
        const s = createServer();
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => resolve(s));
      });
    }),
  );
  const ports = servers.map((s) => {
    const a = s.address();
    if (!a || typeof a === 'string') throw new Error('no port');
    return a.port;
  });
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** A Kafka cluster id, as Uuid.randomUuid() makes it: 16 random bytes, base64url, never starting with '-'. */
export function randomClusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

export function serverProperties(o: { dataDir: string; port: number; controllerPort: number; config?: StartBrokerOptions['config'] }): string {
  const props: Record<string, string | number | boolean> = {
    'process.roles': 'broker,controller',
    'node.id': 1,
    'controller.quorum.voters': `1@127.0.0.1:${o.controllerPort}`,
    listeners: `PLAINTEXT://127.0.0.1:${o.port},CONTROLLER://127.0.0.1:${o.controllerPort}`,
    'advertised.listeners': `PLAINTEXT://127.0.0.1:${o.port}`,
    'controller.listener.names': 'CONTROLLER',
    'inter.broker.listener.name': 'PLAINTEXT',
    'listener.security.protocol.map': 'PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
    'log.dirs': join(o.dataDir, 'kafka-logs'),
    'num.partitions': 1,
    'default.replication.factor': 1,
    'min.insync.replicas': 1,
    'offsets.topic.replication.factor': 1,
    'offsets.topic.num.partitions': 1,
    'transaction.state.log.replication.factor': 1,
    'transaction.state.log.min.isr': 1,
    'share.coordinator.state.topic.replication.factor': 1,
    'share.coordinator.state.topic.min.isr': 1,
    'group.initial.rebalance.delay.ms': 0,
    'auto.create.topics.enable': false,
    'unclean.leader.election.enable': false,
    'transaction.abort.timed.out.transaction.cleanup.interval.ms': 10_000,
    // After a SIGKILL the restarted node's controller still holds the dead
    // incarnation's registration and refuses the new one
    // (DUPLICATE_BROKER_REGISTRATION) until that session expires: 9 s by
    // default, ~3 s here, so restart() after kill('SIGKILL') takes ~6 s, not ~14.
    'broker.session.timeout.ms': 3000,
    'broker.heartbeat.interval.ms': 500,
    // zos keeps everything: no time- or size-based deletion by default.
    'log.retention.ms': -1,
    'log.retention.bytes': -1,
    // Durability: see the note at the top; no log.flush.* (acked writes survive SIGKILL via the page cache).
    ...o.config,
  };
  return (
    `# Written by infra/kafka/broker.ts (single-node KRaft, loopback only).\n` +
    Object.entries(props)
      .map(([k, v]) => `${k}=${String(v)}`)
      .join('\n') +
    '\n'
  );
}

function readFrom(file: string, offset: number): string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return '';
  }
  try {
    const size = fstatSync(fd).size;
    if (size <= offset) return '';
    const buf = Buffer.alloc(size - offset);
    const n = readSync(fd, buf, 0, buf.length, offset);
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

function tailOf(file: string, n: number): string {
  const size = fileSize(file);
  const text = readFrom(file, Math.max(0, size - 256 * 1024));
  return text.split('\n').filter(Boolean).slice(-n).join('\n');
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.setTimeout(1000);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });
}

// Brokers to kill if this process goes away, and temp data dirs startBroker made itself.
const live = new Set<{ pid: number; watchdog?: ChildProcess }>();
const ownedTempDirs = new Set<string>();
let hooksInstalled = false;

function killAllNow(): void {
  for (const b of live) {
    try {
      process.kill(b.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    try {
      b.watchdog?.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
  for (const dir of ownedTempDirs) rmSync(dir, { recursive: true, force: true });
  ownedTempDirs.clear();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killAllNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      killAllNow();
      // If nobody else handles the signal, do what Node would have done: die of it.
      if (process.listenerCount(sig) === 1) {
        process.removeListener(sig, onSignal);
        process.kill(process.pid, sig);
      }
    };
    process.on(sig, onSignal);
  }
}

/**
 * A watchdog that SIGKILLs the JVM when this process dies in any way: its
 * stdin is a pipe from us, and `read` returns when the pipe closes. It checks
 * /proc/PID/cmdline first so that a recycled pid is never hit.
 */
function startWatchdog(pid: number): ChildProcess {
  const script = `read _ ; grep -q kafka.Kafka /proc/${pid}/cmdline 2>/dev/null && kill -9 ${pid} 2>/dev/null; exit 0`;
  const w = spawn('/bin/sh', ['-c', script], { stdio: ['pipe', 'ignore', 'ignore'] });
  w.on('error', () => {});
  w.unref();
  (w.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  return w;
}

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
  done: boolean;
  entry: { pid: number; watchdog?: ChildProcess };
}

class KafkaBroker implements Broker {
  readonly bootstrap: string;
  readonly port: number;
  readonly controllerPort: number;
  readonly dataDir: string;
  private proc: Proc | undefined;
  private readonly lib: string;
  private readonly heapMb: number;
  private readonly detached: boolean;
  private readonly readyTimeoutMs: number;

  constructor(o: { lib: string; dataDir: string; port: number; controllerPort: number; heapMb: number; detached: boolean; readyTimeoutMs: number }) {
    this.lib = o.lib;
    this.dataDir = o.dataDir;
    this.port = o.port;
    this.controllerPort = o.controllerPort;
    this.heapMb = o.heapMb;
    this.detached = o.detached;
    this.readyTimeoutMs = o.readyTimeoutMs;
    this.bootstrap = `127.0.0.1:${o.port}`;
  }

  get pid(): number {
    return this.proc?.child.pid ?? -1;
  }

  get logFile(): string {
    return join(this.dataDir, 'server.log');
  }

  get consoleFile(): string {
    return join(this.dataDir, 'console.out');
  }

  logTail(n = 40): string {
    return tailOf(this.logFile, n);
  }

  /** Spawn the JVM and wait for "Kafka Server started" written after this start. */
  async start(): Promise<void> {
    const from = fileSize(this.logFile);
    const consoleFrom = fileSize(this.consoleFile);
    const out = openSync(this.consoleFile, 'a');
    const args = [
      `-Xmx${this.heapMb}m`,
      `-Xms${this.heapMb}m`,
      '-XX:+UseG1GC',
      '-Djava.awt.headless=true',
      `-Dkafka.logs.dir=${this.dataDir}`,
      `-Dlog4j2.configurationFile=${LOG4J_BROKER_CONFIG}`,
      '-cp',
      join(this.lib, '*'),
      'kafka.Kafka',
      join(this.dataDir, 'server.properties'),
    ];
    let child: ChildProcess;
    try {
      child = spawn('java', args, { cwd: this.dataDir, stdio: ['ignore', out, out], detached: this.detached });
    } finally {
      closeSync(out);
    }
    if (child.pid === undefined) {
      await new Promise((r) => child.once('error', r));
      throw new Error(`could not start java (${INSTALL_HINT})`);
    }
    const entry: Proc['entry'] = { pid: child.pid };
    const proc: Proc = {
      child,
      done: false,
      entry,
      exited: new Promise<void>((resolve) => {
        child.once('exit', () => {
          proc.done = true;
          live.delete(entry);
          try {
            entry.watchdog?.kill('SIGKILL');
          } catch {
            // gone
          }
          resolve();
        });
      }),
    };
    this.proc = proc;
    child.unref();
    if (!this.detached) {
      installExitHooks();
      entry.watchdog = startWatchdog(child.pid);
      live.add(entry);
    }

    const deadline = Date.now() + this.readyTimeoutMs;
    for (;;) {
      const text = readFrom(this.logFile, from);
      if (text.includes(READY_LINE) && (await canConnect(this.port))) return;
      if (proc.done) {
        const consoleText = readFrom(this.consoleFile, consoleFrom).split('\n').slice(-20).join('\n');
        const err = new Error(
          `Kafka broker exited during startup (exit code ${child.exitCode}, signal ${child.signalCode}).\n` +
            `--- last lines of ${this.logFile} ---\n${this.logTail(30)}\n--- ${this.consoleFile} ---\n${consoleText}`,
        );
        (err as Error & { bindFailure?: boolean }).bindFailure = /Address already in use|BindException/.test(text + consoleText);
        throw err;
      }
      if (Date.now() > deadline) {
        const consoleText = readFrom(this.consoleFile, consoleFrom).split('\n').slice(-20).join('\n');
        await this.kill('SIGKILL');
        throw new Error(
          `Kafka broker not ready after ${this.readyTimeoutMs} ms (no "${READY_LINE}" in ${this.logFile}); killed it.\n` +
            `--- last lines of ${this.logFile} ---\n${this.logTail(30)}\n--- ${this.consoleFile} ---\n${consoleText}`,
        );
      }
      await sleep(100);
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc;
    if (!p || p.done) return;
    p.child.ref(); // keep the event loop alive until it has exited
    try {
      p.child.kill(signal);
      await p.exited;
    } finally {
      p.child.unref();
    }
  }

  async stop(opts: { removeData?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const p = this.proc;
    if (p && !p.done) {
      p.child.ref();
      try {
        p.child.kill('SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          p.exited.then(() => false),
          new Promise<boolean>((r) => (timer = setTimeout(() => r(true), opts.timeoutMs ?? 30_000))),
        ]);
        clearTimeout(timer);
        if (timedOut) {
          p.child.kill('SIGKILL');
          await p.exited;
        }
      } finally {
        p.child.unref();
      }
    }
    if (opts.removeData) rmSync(this.dataDir, { recursive: true, force: true });
  }

  async restart(): Promise<void> {
    if (this.proc && !this.proc.done) await this.stop();
    await this.start();
  }
}

/**
 * Start a single-node KRaft broker (broker+controller, node.id=1) on loopback.
 * Formats the storage on first use of a data dir; later starts on the same dir
 * (restart(), or a new startBroker with that dataDir) keep the data.
 */
export async function startBroker(opts: StartBrokerOptions = {}): Promise<Broker> {
  const lib = await ensureKafkaInstalled();
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'zos-kafka-'));
  mkdirSync(dataDir, { recursive: true });
  if (opts.dataDir === undefined && !opts.detached) {
    // Our own temp dir: removed when this process exits (or by stop({ removeData: true })).
    ownedTempDirs.add(dataDir);
    installExitHooks();
  }
  const pickPorts = opts.port === undefined || opts.controllerPort === undefined;
  for (let attempt = 1; ; attempt++) {
    const free = pickPorts ? await freePorts(2) : [];
    const port = opts.port ?? free[0]!;
    const controllerPort = opts.controllerPort ?? (free[1] === port ? free[0]! : free[1]!);
    const propsFile = join(dataDir, 'server.properties');
    writeFileSync(propsFile, serverProperties({ dataDir, port, controllerPort, ...(opts.config ? { config: opts.config } : {}) }));
    if (!existsSync(join(dataDir, 'kafka-logs', 'meta.properties'))) {
      const r = await run('java', [
        `-Dlog4j2.configurationFile=${LOG4J_TOOLS_CONFIG}`,
        '-cp',
        join(lib, '*'),
        'kafka.tools.StorageTool',
        'format',
        '-t',
        randomClusterId(),
        '-c',
        propsFile,
      ]);
      // Static quorum (controller.quorum.voters): plain `format`; --standalone is refused in 4.1.1.
      if (r.code !== 0) throw new Error(`kafka StorageTool format failed (exit ${r.code}):\n${r.out}`);
    }
    const broker = new KafkaBroker({
      lib,
      dataDir,
      port,
      controllerPort,
      heapMb: opts.heapMb ?? 512,
      detached: opts.detached ?? false,
      readyTimeoutMs: opts.readyTimeoutMs ?? 90_000,
    });
    try {
      await broker.start();
      return broker;
    } catch (e) {
      // A port we picked was taken between our probe and the JVM's bind: pick again.
      if (pickPorts && attempt < 3 && (e as { bindFailure?: boolean }).bindFailure) continue;
      throw e;
    }
  }
}

// ---------------------------------------------------------------------------
// Kafka's own tools
// ---------------------------------------------------------------------------

async function runTool(mainClass: string, args: string[], timeoutMs: number): Promise<string> {
  const lib = await ensureKafkaInstalled();
  return new Promise((resolve, reject) => {
    const child = spawn('java', ['-Xmx512m', `-Dlog4j2.configurationFile=${LOG4J_TOOLS_CONFIG}`, '-cp', join(lib, '*'), mainClass, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${mainClass} ${args.join(' ')} failed (exit ${code}, signal ${signal}):\n${out.slice(-3000)}\n${err.slice(-3000)}`));
    });
  });
}

/** Create a topic with Kafka's own TopicCommand (no JS client needed). */
export async function createTopic(
  bootstrap: string,
  topic: string,
  opts: { partitions?: number; replicationFactor?: number; config?: Record<string, string | number> } = {},
): Promise<void> {
  const args = ['--bootstrap-server', bootstrap, '--create', '--if-not-exists', '--topic', topic];
  args.push('--partitions', String(opts.partitions ?? 1), '--replication-factor', String(opts.replicationFactor ?? 1));
  for (const [k, v] of Object.entries(opts.config ?? {})) args.push('--config', `${k}=${v}`);
  await runTool('org.apache.kafka.tools.TopicCommand', args, 120_000);
}

export interface ProducerPerfOptions {
  bootstrap: string;
  topic: string;
  numRecords: number;
  recordSize: number;
  acks?: 'all' | '-1' | '1' | '0';
  /** Records/s cap; -1 = as fast as possible. */
  throughput?: number;
  /** More producer properties (e.g. linger.ms, batch.size, compression.type). */
  extraProps?: Record<string, string | number | boolean>;
  timeoutMs?: number;
}

export interface ProducerPerfResult {
  recordsPerSec: number;
  mbPerSec: number;
  avgLatencyMs: number;
  maxLatencyMs: number;
  p50?: number;
  p95?: number;
  p99?: number;
  p999?: number;
  /** Everything the tool printed on stdout. */
  raw: string;
}

/**
 * Parse ProducerPerformance's final summary, e.g.
 * "1000 records sent, 4366.8 records/sec (0.42 MB/sec), 38.94 ms avg latency,
 *  213.00 ms max latency, 34 ms 50th, 67 ms 95th, 70 ms 99th, 213 ms 99.9th."
 */
export function parseProducerPerf(raw: string): ProducerPerfResult {
  const line = raw
    .split('\n')
    .filter((l) => /records\/sec/.test(l) && /50th/.test(l))
    .pop();
  const m = line && /([\d.]+) records\/sec \(([\d.]+) MB\/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency/.exec(line);
  if (!line || !m) throw new Error(`no ProducerPerformance summary line in its output:\n${raw.slice(-2000)}`);
  const pct = (label: string) => {
    const p = new RegExp(`([\\d.]+) ms ${label.replace('.', '\\.')}\\b`).exec(line);
    return p ? Number(p[1]) : undefined;
  };
  const r: ProducerPerfResult = {
    recordsPerSec: Number(m[1]),
    mbPerSec: Number(m[2]),
    avgLatencyMs: Number(m[3]),
    maxLatencyMs: Number(m[4]),
    raw,
  };
  const p50 = pct('50th');
  const p95 = pct('95th');
  const p99 = pct('99th');
  const p999 = pct('99.9th');
  if (p50 !== undefined) r.p50 = p50;
  if (p95 !== undefined) r.p95 = p95;
  if (p99 !== undefined) r.p99 = p99;
  if (p999 !== undefined) r.p999 = p999;
  return r;
}

/** Run org.apache.kafka.tools.ProducerPerformance against `bootstrap` (the topic must exist). */
export async function runProducerPerf(o: ProducerPerfOptions): Promise<ProducerPerfResult> {
  const props: Record<string, string | number | boolean> = { 'bootstrap.servers': o.bootstrap, acks: o.acks ?? 'all', ...o.extraProps };
  const args = [
    '--topic',
    o.topic,
    '--num-records',
    String(o.numRecords),
    '--record-size',
    String(o.recordSize),
    '--throughput',
    String(o.throughput ?? -1),
    '--producer-props',
    ...Object.entries(props).map(([k, v]) => `${k}=${String(v)}`),
  ];
  const raw = await runTool('org.apache.kafka.tools.ProducerPerformance', args, o.timeoutMs ?? 600_000);
  return parseProducerPerf(raw);
}
