/**
 * What a topic's log holds, read from the broker rather than through a consumer: how many
 * records (offsets), and the record batches as the broker returns them — a plain Fetch (v4)
 * request over a socket, so a test sees each batch's attributes (the compression codec among
 * them), which kafkajs reads and hides. Only what the tests need: no retries, uncommitted reads,
 * one request per partition leader.
 */
import { Socket } from "node:net";

import { testKafka } from "./isolation.js";

/** Kafka's codec ids in the low three bits of a batch's attributes. */
export const CODEC_IDS = { none: 0, gzip: 1, snappy: 2, lz4: 3, zstd: 4 } as const;

export interface StoredBatch {
  readonly partition: number;
  readonly baseOffset: bigint;
  /** attributes & 7: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd. */
  readonly codecId: number;
  readonly recordCount: number;
  /** The records section as stored (compressed when the codec says so). */
  readonly records: Buffer;
}

const FETCH_API_KEY = 1;
const FETCH_VERSION = 4;

function int16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeInt16BE(value);
  return buffer;
}
function int32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeInt32BE(value);
  return buffer;
}
function int64(value: bigint): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigInt64BE(value);
  return buffer;
}
function kafkaString(value: string): Buffer {
  const bytes = Buffer.from(value, "utf8");
  return Buffer.concat([int16(bytes.length), bytes]);
}

function fetchRequest(topic: string, partitions: readonly number[], correlationId: number): Buffer {
  const body = Buffer.concat([
    kafkaString("mcpo-test-batches"),
    int32(-1), // replica id: a consumer
    int32(500), // max wait ms
    int32(1), // min bytes
    int32(64 * 1024 * 1024), // max bytes
    Buffer.from([0]), // read uncommitted
    int32(1),
    kafkaString(topic),
    int32(partitions.length),
    ...partitions.map((partition) =>
      Buffer.concat([int32(partition), int64(0n), int32(16 * 1024 * 1024)]),
    ),
  ]);
  const header = Buffer.concat([int16(FETCH_API_KEY), int16(FETCH_VERSION), int32(correlationId)]);
  const message = Buffer.concat([header, body]);
  return Buffer.concat([int32(message.length), message]);
}

/** Sends one request and returns the response body (after the size and correlation id). */
function roundTrip(
  host: string,
  port: number,
  request: Buffer,
  correlationId: number,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    const chunks: Buffer[] = [];
    let received = 0;
    socket.setTimeout(15_000, () => {
      socket.destroy(new Error(`no Fetch response from ${host}:${port} within 15 s`));
    });
    socket.once("error", reject);
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.length;
      if (received < 4) return;
      const all = Buffer.concat(chunks);
      const size = all.readInt32BE(0);
      if (all.length < 4 + size) return;
      socket.end();
      const correlation = all.readInt32BE(4);
      if (correlation !== correlationId)
        reject(new Error(`correlation id ${correlation}, expected ${correlationId}`));
      else resolve(all.subarray(8, 4 + size));
    });
    socket.connect(port, host, () => {
      socket.write(request);
    });
  });
}

class Reader {
  private offset = 0;
  constructor(private readonly buffer: Buffer) {}
  int8(): number {
    const value = this.buffer.readInt8(this.offset);
    this.offset += 1;
    return value;
  }
  int16(): number {
    const value = this.buffer.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }
  int32(): number {
    const value = this.buffer.readInt32BE(this.offset);
    this.offset += 4;
    return value;
  }
  int64(): bigint {
    const value = this.buffer.readBigInt64BE(this.offset);
    this.offset += 8;
    return value;
  }
  string(): string {
    const length = this.int16();
    const value = this.buffer.toString("utf8", this.offset, this.offset + length);
    this.offset += length;
    return value;
  }
  bytes(length: number): Buffer {
    const value = this.buffer.subarray(this.offset, this.offset + length);
    this.offset += length;
    return value;
  }
}

/** Splits a partition's records bytes into batches (a last, partial batch is left out). */
function parseBatches(partition: number, records: Buffer): StoredBatch[] {
  const batches: StoredBatch[] = [];
  let offset = 0;
  while (offset + 12 <= records.length) {
    const baseOffset = records.readBigInt64BE(offset);
    const length = records.readInt32BE(offset + 8);
    if (offset + 12 + length > records.length) break;
    const batch = new Reader(records.subarray(offset + 12, offset + 12 + length));
    batch.int32(); // partition leader epoch
    const magic = batch.int8();
    if (magic !== 2) throw new Error(`batch at ${baseOffset}: magic ${magic}, expected 2`);
    batch.int32(); // crc
    const attributes = batch.int16();
    batch.int32(); // last offset delta
    batch.int64(); // base timestamp
    batch.int64(); // max timestamp
    batch.int64(); // producer id
    batch.int16(); // producer epoch
    batch.int32(); // base sequence
    const recordCount = batch.int32();
    batches.push({
      partition,
      baseOffset,
      codecId: attributes & 0x07,
      recordCount,
      records: batch.bytes(length - 49),
    });
    offset += 12 + length;
  }
  return batches;
}

/** How many records a topic holds: the sum of its partitions' end offsets minus start offsets. */
export async function recordsInTopic(brokers: string, topic: string): Promise<number> {
  const admin = testKafka(undefined, brokers).admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return offsets.reduce((sum, entry) => sum + Number(entry.high) - Number(entry.low), 0);
  } finally {
    await admin.disconnect();
  }
}

/** Every record batch of `topic` (all partitions, from offset 0), as its leaders return them. */
export async function storedBatches(brokers: string, topic: string): Promise<StoredBatch[]> {
  const admin = testKafka(undefined, brokers).admin();
  await admin.connect();
  let leaders: Map<number, { host: string; port: number; partitions: number[] }>;
  try {
    const cluster = await admin.describeCluster();
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
    leaders = new Map();
    for (const partition of metadata.topics[0]?.partitions ?? []) {
      const broker = cluster.brokers.find((candidate) => candidate.nodeId === partition.leader);
      if (!broker) throw new Error(`${topic}[${partition.partitionId}] has no leader`);
      const entry = leaders.get(broker.nodeId) ?? {
        host: broker.host,
        port: broker.port,
        partitions: [],
      };
      entry.partitions.push(partition.partitionId);
      leaders.set(broker.nodeId, entry);
    }
  } finally {
    await admin.disconnect();
  }
  const batches: StoredBatch[] = [];
  let correlationId = 1;
  for (const { host, port, partitions } of leaders.values()) {
    const id = correlationId++;
    const response = new Reader(
      await roundTrip(host, port, fetchRequest(topic, partitions, id), id),
    );
    response.int32(); // throttle time
    const topics = response.int32();
    for (let t = 0; t < topics; t++) {
      response.string();
      const partitionCount = response.int32();
      for (let p = 0; p < partitionCount; p++) {
        const partition = response.int32();
        const errorCode = response.int16();
        response.int64(); // high watermark
        response.int64(); // last stable offset
        const aborted = response.int32();
        for (let a = 0; a < aborted; a++) {
          response.int64();
          response.int64();
        }
        const size = response.int32();
        if (errorCode !== 0)
          throw new Error(`Fetch of ${topic}[${partition}] answered error code ${errorCode}`);
        batches.push(...parseBatches(partition, size > 0 ? response.bytes(size) : Buffer.alloc(0)));
      }
    }
  }
  return batches;
}
