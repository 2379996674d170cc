/** infra/kafka: a real Apache Kafka broker for tests, benchmarks and development. */
export {
  KAFKA_VERSION,
  INSTALL_HINT,
  kafkaHome,
  kafkaLibDir,
  kafkaInstalled,
  checkKafkaPrerequisites,
  ensureKafkaInstalled,
  startBroker,
  freePorts,
  createTopic,
  runProducerPerf,
  parseProducerPerf,
  type Broker,
  type StartBrokerOptions,
  type ProducerPerfOptions,
  type ProducerPerfResult,
} from './broker.ts';
