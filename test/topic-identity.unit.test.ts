/**
 * Checkpoints carry the id of the topic their state was built from: those of another topic of the
 * same name (deleted and created again, or another cluster's) are found and refused, with one
 * error naming the topic, both ids and the way out; those written before ids were are kept.
 */
import { describe, expect, it } from "vitest";

import { ERROR_EXITS, EXIT, failureOf } from "../cli/output.js";
import { TopicReplacedError } from "../kafka/index.js";
import { checkCheckpointTopic, checkpointsOfOtherTopic } from "../processor/checkpoints.js";

const NOW = "q3xW0GvKSAmC0vH6TPOnOg";
const OLD = "JBTN7bGAQD2d7S4wXfWhIg";

describe("checkpoints of another topic of the same name", () => {
  it("finds the checkpoints whose topic id is not the topic's id now; those without an id are kept", () => {
    const checkpoints = [
      { partition: 0, topicId: NOW },
      { partition: 1, topicId: OLD },
      { partition: 2 },
      { partition: 3, topicId: OLD },
    ];
    expect(checkpointsOfOtherTopic(checkpoints, NOW).map((c) => c.partition)).toEqual([1, 3]);
    expect(checkpointsOfOtherTopic(checkpoints, OLD).map((c) => c.partition)).toEqual([0]);
    const withoutIds: { partition: number; topicId?: string }[] = [{ partition: 2 }];
    expect(checkpointsOfOtherTopic(withoutIds, NOW)).toEqual([]);
  });

  it("accepts checkpoints of this topic and checkpoints without an id", () => {
    expect(() => {
      checkCheckpointTopic("g", "mcpo.model-calls", [{ topicId: NOW }, {}], NOW);
    }).not.toThrow();
    expect(() => {
      checkCheckpointTopic("g", "mcpo.model-calls", [], NOW);
    }).not.toThrow();
  });

  it("refuses checkpoints of another topic: one error naming the group, topic, both ids and the way out, which the CLI ends with exit 2", () => {
    const check = () => {
      checkCheckpointTopic(
        "mcpo-processor",
        "mcpo.model-calls",
        [{ topicId: NOW }, { topicId: OLD }],
        NOW,
      );
    };
    expect(check).toThrow(TopicReplacedError);
    let error: unknown;
    try {
      check();
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({
      code: "TOPIC_REPLACED",
      context: { topic: "mcpo.model-calls" },
      replaced: [{ topic: "mcpo.model-calls", storedId: OLD, currentId: NOW }],
    });
    const message = (error as Error).message;
    expect(message).toContain("group mcpo-processor's checkpoints");
    expect(message).toContain(`mcpo.model-calls (stored topic id ${OLD}, now ${NOW})`);
    expect(message).toContain("--reset-state");
    expect(ERROR_EXITS.TOPIC_REPLACED?.exitCode).toBe(EXIT.usage);
    expect(failureOf(error, false)).toEqual({ line: message, exitCode: EXIT.usage });
  });
});
