/**
 * The development broker, for people and CI:
 *
 *   node infra/kafka/cli.ts install   fetch the Kafka jars with Maven (cached; no-op when present)
 *   node infra/kafka/cli.ts up        start a detached single-node broker (npm run kafka:up)
 *   node infra/kafka/cli.ts down      stop it and remove its data          (npm run kafka:down)
 *   node infra/kafka/cli.ts status    is it running, and where
 *
 * Data dir: $ZOS_KAFKA_DATA or <repo>/.kafka-dev. Ports: $ZOS_KAFKA_PORT
 * (default 9092) and $ZOS_KAFKA_CONTROLLER_PORT (default PORT+1), loopback only.
 * `up` writes <data dir>/broker.pid and <data dir>/broker.json.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureKafkaInstalled, startBroker } from './broker.ts';

const REPO = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const dataDir = resolve(process.env.ZOS_KAFKA_DATA || join(REPO, '.kafka-dev'));
const pidFile = join(dataDir, 'broker.pid');
const infoFile = join(dataDir, 'broker.json');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pid in the pid file, if that process is still our Kafka JVM. */
function runningPid(): number | undefined {
  if (!existsSync(pidFile)) return undefined;
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return undefined;
  try {
    if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('kafka.Kafka')) return undefined;
  } catch {
    // no /proc: trust the pid file
  }
  return pid;
}

function bootstrapOf(): string {
  try {
    return (JSON.parse(readFileSync(infoFile, 'utf8')) as { bootstrap: string }).bootstrap;
  } catch {
    return '?';
  }
}

function portFromEnv(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0 || n > 65535) throw new Error(`${name} must be a TCP port, not ${JSON.stringify(v)}`);
  return n;
}

async function up(): Promise<void> {
  const running = runningPid();
  if (running !== undefined) {
    console.log(`kafka already running (pid ${running}) at ${bootstrapOf()}; data in ${dataDir}`);
    return;
  }
  await ensureKafkaInstalled({ log: (l) => console.log(l) });
  const port = portFromEnv('ZOS_KAFKA_PORT') ?? 9092;
  const controllerPort = portFromEnv('ZOS_KAFKA_CONTROLLER_PORT') ?? port + 1;
  const started = Date.now();
  const b = await startBroker({ dataDir, port, controllerPort, detached: true });
  writeFileSync(pidFile, `${b.pid}\n`);
  writeFileSync(infoFile, `${JSON.stringify({ bootstrap: b.bootstrap, port, controllerPort, pid: b.pid, dataDir }, null, 2)}\n`);
  console.log(`kafka ready at ${b.bootstrap} (pid ${b.pid}, ${((Date.now() - started) / 1000).toFixed(1)} s; data and server.log in ${dataDir})`);
  console.log(`stop it with: npm run kafka:down`);
}

async function down(): Promise<void> {
  const pid = runningPid();
  if (pid !== undefined) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 30_000;
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    while (alive(pid)) await new Promise((r) => setTimeout(r, 50));
    console.log(`kafka (pid ${pid}) stopped`);
  } else {
    console.log('kafka was not running');
  }
  if (existsSync(dataDir)) {
    rmSync(dataDir, { recursive: true, force: true });
    console.log(`removed ${dataDir}`);
  }
}

function status(): void {
  const pid = runningPid();
  if (pid === undefined) {
    console.log('kafka not running');
    process.exitCode = 1;
  } else console.log(`kafka running (pid ${pid}) at ${bootstrapOf()}; data in ${dataDir}`);
}

const cmd = process.argv[2];
try {
  if (cmd === 'install') {
    const lib = await ensureKafkaInstalled({ log: (l) => console.log(l) });
    console.log(`Kafka jars in ${lib}`);
  } else if (cmd === 'up') await up();
  else if (cmd === 'down') await down();
  else if (cmd === 'status') status();
  else {
    console.error('usage: node infra/kafka/cli.ts install|up|down|status');
    process.exitCode = 2;
  }
} catch (e) {
  console.error(`kafka ${cmd}: ${(e as Error).message}`);
  process.exitCode = 1;
}
