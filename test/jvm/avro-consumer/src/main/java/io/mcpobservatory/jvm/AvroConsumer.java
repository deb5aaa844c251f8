package io.mcpobservatory.jvm;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads a topic from its start to the end offsets present when it starts, and reads each value
 * as Kafka Connect's AvroConverter (Confluent's deserializer; ksqlDB and Flink do the same) does:
 * a null value is null; anything else must be magic byte 0, a 4-byte schema id, and an Avro body
 * that decodes with the writer schema fetched from the registry's Confluent-compatible API ({@code
 * GET {registry}/schemas/ids/{id}}) through Apache Avro's GenericDatumReader. Prints the counts as
 * one JSON object on stdout.
 *
 * <p>Usage: {@code AvroConsumer <bootstrap servers> <registry ccompat URL> <topic>}
 */
public final class AvroConsumer {
  private static final String CONTROL_HEADER = "mcpo-control";
  private static final byte MAGIC_BYTE = 0;

  private final HttpClient http = HttpClient.newBuilder()
      .connectTimeout(Duration.ofSeconds(10))
      .build();
  private final ObjectMapper json = new ObjectMapper();
  private final String registryUrl;
  private final Map<Integer, Schema> schemas = new HashMap<>();

  private AvroConsumer(String registryUrl) {
    this.registryUrl = registryUrl.replaceAll("/+$", "");
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: AvroConsumer <bootstrap servers> <registry ccompat URL> <topic>");
      System.exit(2);
    }
    System.out.println(new AvroConsumer(args[1]).consume(args[0], args[2]));
  }

  /** The writer schema of {@code id}, as the Confluent deserializer fetches it (cached). */
  private Schema schema(int id) throws IOException, InterruptedException {
    Schema known = schemas.get(id);
    if (known != null) return known;
    HttpRequest request = HttpRequest.newBuilder(URI.create(registryUrl + "/schemas/ids/" + id))
        .header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
        .timeout(Duration.ofSeconds(10))
        .GET()
        .build();
    HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
    if (response.statusCode() != 200)
      throw new IOException(
          "schema id " + id + ": the registry answered " + response.statusCode() + ": "
              + response.body());
    JsonNode body = json.readTree(response.body());
    JsonNode text = body.get("schema");
    if (text == null || !text.isTextual())
      throw new IOException("schema id " + id + ": no schema in " + response.body());
    Schema schema = new Schema.Parser().parse(text.asText());
    schemas.put(id, schema);
    return schema;
  }

  /**
   * What the AvroConverter does with a value: null stays null, anything else decodes or throws
   * (with Confluent's messages).
   */
  private Object decode(byte[] value) throws Exception {
    if (value == null) return null;
    ByteBuffer buffer = ByteBuffer.wrap(value);
    if (value.length < 5 || buffer.get() != MAGIC_BYTE)
      throw new IllegalArgumentException("Unknown magic byte!");
    int id = buffer.getInt();
    Schema schema = schema(id);
    try {
      GenericDatumReader<Object> reader = new GenericDatumReader<>(schema);
      return reader.read(null, DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null));
    } catch (IOException | RuntimeException error) {
      throw new IOException(
          "Error deserializing Avro message for id " + id + ": " + error, error);
    }
  }

  private static String controlOf(ConsumerRecord<byte[], byte[]> record) {
    Header header = record.headers().lastHeader(CONTROL_HEADER);
    if (header == null) return "none";
    return header.value() == null ? "" : new String(header.value(), StandardCharsets.UTF_8);
  }

  private static void increment(ObjectNode counts, String key) {
    counts.put(key, counts.path(key).asLong(0) + 1);
  }

  private String consume(String bootstrap, String topic) throws Exception {
    Properties properties = new Properties();
    properties.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    properties.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    properties.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    properties.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    properties.put(ConsumerConfig.CLIENT_ID_CONFIG, "mcpo-jvm-avro-consumer");

    long records = 0;
    long nulls = 0;
    long decoded = 0;
    long failures = 0;
    ObjectNode nullsByControl = json.createObjectNode();
    ObjectNode decodedByControl = json.createObjectNode();
    ObjectNode failuresByControl = json.createObjectNode();
    ObjectNode firstFailure = null;

    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(properties)) {
      List<PartitionInfo> infos = consumer.partitionsFor(topic, Duration.ofSeconds(30));
      if (infos == null || infos.isEmpty())
        throw new IllegalStateException("topic " + topic + " does not exist or has no partitions");
      List<TopicPartition> partitions = new ArrayList<>();
      for (PartitionInfo info : infos) partitions.add(new TopicPartition(topic, info.partition()));
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> ends = new TreeMap<>(
          (a, b) -> Integer.compare(a.partition(), b.partition()));
      ends.putAll(consumer.endOffsets(partitions, Duration.ofSeconds(30)));
      long deadline = System.nanoTime() + Duration.ofSeconds(120).toNanos();
      while (ends.entrySet().stream().anyMatch(end -> consumer.position(end.getKey()) < end.getValue())) {
        if (System.nanoTime() > deadline)
          throw new IllegalStateException("did not reach the end offsets " + ends + " in 120 s");
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(500))) {
          TopicPartition partition = new TopicPartition(record.topic(), record.partition());
          if (record.offset() >= ends.get(partition)) continue;
          records++;
          String control = controlOf(record);
          try {
            Object value = decode(record.value());
            if (value == null) {
              nulls++;
              increment(nullsByControl, control);
            } else {
              decoded++;
              increment(decodedByControl, control);
            }
          } catch (Exception error) {
            failures++;
            increment(failuresByControl, control);
            if (firstFailure == null) {
              firstFailure = json.createObjectNode();
              firstFailure.put("partition", record.partition());
              firstFailure.put("offset", record.offset());
              firstFailure.put("control", control);
              firstFailure.put("message", error.getMessage());
            }
          }
        }
      }
    }

    ObjectNode result = json.createObjectNode();
    result.put("topic", topic);
    result.put("records", records);
    result.put("nulls", nulls);
    result.put("decoded", decoded);
    result.put("failures", failures);
    result.set("nullsByControl", nullsByControl);
    result.set("decodedByControl", decodedByControl);
    result.set("failuresByControl", failuresByControl);
    result.set("firstFailure", firstFailure);
    result.putPOJO("schemaIds", new ArrayList<>(new TreeMap<>(schemas).keySet()));
    return json.writeValueAsString(result);
  }
}
