/**
 * Working with a topic just created: its partitions' leaders may still be settling on a busy
 * broker ("This server does not host this topic-partition" past kafkajs's own retries), so the
 * work is tried again, with fresh metadata, until it succeeds or the bound passes.
 */
import type { Producer, ProducerRecord } from "kafkajs";

import { pause } from "./wait.js";

/** Runs `work` again while it fails with a retriable Kafka error, for up to `timeoutMs`. */
export async function whenSettled<T>(work: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await work();
    } catch (error) {
      const retriable = (error as { retriable?: unknown }).retriable === true;
      const settling = /does not host this topic-partition|leader/i.test(String(error));
      if (!(retriable || settling) || Date.now() >= deadline) throw error;
      await pause(500);
    }
  }
}

/** A send to a topic just created, tried again while its leaders settle. */
export async function sendWhenSettled(
  producer: Producer,
  record: ProducerRecord,
  timeoutMs = 30_000,
): Promise<void> {
  await whenSettled(() => producer.send(record), timeoutMs);
}
