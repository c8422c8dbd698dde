import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads a topic from its beginning until it has seen the expected number of records, for the smoke
 * check of scripts/peers.sh. Creates the topic first if it is missing (PARTITIONS partitions,
 * replication factor 1), assigns all its partitions (no consumer group), and touches READY_FILE once
 * it is positioned: records written after that are all read.
 *
 * <p>Usage: {@code Consume BOOTSTRAP TOPIC PARTITIONS COUNT SECONDS READY_FILE [--delete]}; with
 * {@code --delete}, the topic is deleted once read (or at the deadline). Prints one line per
 * record on standard output: {@code RECEIVED_MS PARTITION OFFSET KEY VALUE}, tab-separated, where
 * RECEIVED_MS is this process's wall clock (epoch milliseconds) when poll returned the record, and
 * KEY and VALUE are the record's bytes read as UTF-8 ({@code <null>} for none). Exit status 0 once
 * COUNT records were read, 1 at the deadline, 2 on bad arguments.
 */
public final class Consume {
    public static void main(String[] args) throws Exception {
        if (args.length != 6 && !(args.length == 7 && args[6].equals("--delete"))) {
            System.err.println("usage: Consume BOOTSTRAP TOPIC PARTITIONS COUNT SECONDS READY_FILE [--delete]");
            System.exit(2);
        }
        boolean delete = args.length == 7;
        String bootstrap = args[0];
        String topic = args[1];
        int partitions = Integer.parseInt(args[2]);
        long expected = Long.parseLong(args[3]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[4]));
        Path ready = Path.of(args[5]);

        Properties admin = new Properties();
        admin.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        int found;
        try (Admin client = Admin.create(admin)) {
            try {
                client.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get(30, TimeUnit.SECONDS);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
            found = client.describeTopics(Set.of(topic)).allTopicNames().get(30, TimeUnit.SECONDS)
                .get(topic).partitions().size();
        }

        Properties config = new Properties();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        config.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        config.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, "10");
        config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        long seen = 0;
        StringBuilder out = new StringBuilder();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config)) {
            List<TopicPartition> assigned = new ArrayList<>();
            for (int p = 0; p < found; p++) {
                assigned.add(new TopicPartition(topic, p));
            }
            consumer.assign(assigned);
            consumer.seekToBeginning(assigned);
            for (TopicPartition partition : assigned) {
                consumer.position(partition); // resolves the seek now, before READY_FILE
            }
            Files.writeString(ready, "ready\n");
            while (seen < expected && System.nanoTime() < deadline) {
                var records = consumer.poll(Duration.ofMillis(50));
                long now = System.currentTimeMillis();
                for (ConsumerRecord<byte[], byte[]> record : records) {
                    out.setLength(0);
                    out.append(now).append('\t').append(record.partition()).append('\t').append(record.offset())
                        .append('\t').append(text(record.key())).append('\t').append(text(record.value()));
                    System.out.println(out);
                    seen++;
                }
            }
        }
        System.out.flush();
        if (delete) {
            try (Admin client = Admin.create(admin)) {
                client.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
            }
        }
        if (seen < expected) {
            System.err.println("read " + seen + " of " + expected + " records of " + topic + " before the deadline");
            System.exit(1);
        }
    }

    private static String text(byte[] bytes) {
        return bytes == null ? "<null>" : new String(bytes, StandardCharsets.UTF_8);
    }
}
