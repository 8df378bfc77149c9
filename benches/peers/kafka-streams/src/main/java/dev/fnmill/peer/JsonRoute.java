package dev.fnmill.peer;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Reads every record of an input topic, parses its value as JSON and forwards the record
 * unchanged (key, value, headers) to the output topic, or to the dead-letter topic when the
 * value is not one JSON document. The job fnmill's `json-route` test guest does, written the way
 * a Kafka Streams user would: the DSL, Jackson, at-least-once, default commit interval.
 *
 * <p>Arguments: {@code --bootstrap HOST:PORT --application-id ID --input TOPIC --output TOPIC
 * --dead-letter TOPIC [--threads N]} (N defaults to 2, one per core of the benchmark machine).
 * A usage error prints one line and exits with 2. Runs until SIGTERM, then closes cleanly
 * (committing what it processed).
 */
public final class JsonRoute {
  /** Shared by the stream threads: an ObjectMapper is thread-safe once configured. */
  private static final ObjectMapper MAPPER =
      new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

  private JsonRoute() {}

  /** True when {@code value} is exactly one JSON document (like serde_json::from_slice). */
  static boolean isJson(byte[] value) {
    if (value == null || value.length == 0) {
      return false;
    }
    try {
      JsonNode node = MAPPER.readTree(value);
      return node != null && !node.isMissingNode();
    } catch (IOException e) {
      return false;
    }
  }

  public static void main(String[] argv) throws InterruptedException {
    Map<String, String> args = parse(argv);
    String bootstrap = required(args, "--bootstrap");
    String applicationId = required(args, "--application-id");
    String input = required(args, "--input");
    String output = required(args, "--output");
    String deadLetter = required(args, "--dead-letter");
    int threads;
    try {
      threads = Integer.parseInt(args.getOrDefault("--threads", "2"));
    } catch (NumberFormatException e) {
      throw usage("--threads must be a whole number, not " + args.get("--threads"));
    }

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
    // Only names things: threads become `peer-StreamThread-N`, so a CPU profile by thread name
    // tells them apart from the clients' network threads.
    props.put(StreamsConfig.CLIENT_ID_CONFIG, "peer");
    // Everything else (commit interval, producer and consumer settings) stays at its default.

    Serde<byte[]> bytes = Serdes.ByteArray();
    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(input, Consumed.with(bytes, bytes))
        .split()
        .branch(
            (key, value) -> isJson(value),
            Branched.withConsumer(ok -> ok.to(output, Produced.with(bytes, bytes))))
        .defaultBranch(
            Branched.withConsumer(bad -> bad.to(deadLetter, Produced.with(bytes, bytes))));

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch closed = new CountDownLatch(1);
    streams.setStateListener(
        (now, before) -> {
          System.err.println("kafka-streams-peer: " + before + " -> " + now);
          if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
            closed.countDown();
          }
        });
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close(Duration.ofSeconds(30));
                  closed.countDown();
                }));
    streams.start();
    closed.await();
    if (streams.state() == KafkaStreams.State.ERROR) {
      System.exit(1);
    }
  }

  private static Map<String, String> parse(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i < argv.length; i += 2) {
      String name = argv[i];
      if (!name.startsWith("--") || i + 1 >= argv.length) {
        throw usage("expected --name value pairs, got " + name);
      }
      args.put(name, argv[i + 1]);
    }
    for (String name : args.keySet()) {
      switch (name) {
        case "--bootstrap", "--application-id", "--input", "--output", "--dead-letter",
            "--threads" -> {}
        default -> throw usage("unknown argument " + name);
      }
    }
    return args;
  }

  private static String required(Map<String, String> args, String name) {
    String value = args.get(name);
    if (value == null || value.isEmpty()) {
      throw usage("missing " + name);
    }
    return value;
  }

  private static RuntimeException usage(String message) {
    System.err.println("kafka-streams-peer: " + message);
    System.err.println(
        "usage: JsonRoute --bootstrap HOST:PORT --application-id ID --input TOPIC"
            + " --output TOPIC --dead-letter TOPIC [--threads N]");
    System.exit(2);
    return new IllegalStateException("unreachable");
  }
}
