import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;

/**
 * Waits until a Kafka cluster answers a cluster-metadata request listing at least the expected
 * number of registered, unfenced brokers with a controller, or until the deadline passes.
 *
 * <p>Usage: {@code Ready BOOTSTRAP BROKERS SECONDS}. Exit status 0 when ready, 1 at the deadline
 * (with the last answer or error on standard output), 2 on bad arguments.
 */
public final class Ready {
    public static void main(String[] args) throws InterruptedException {
        if (args.length != 3) {
            System.err.println("usage: Ready BOOTSTRAP BROKERS SECONDS");
            System.exit(2);
        }
        String bootstrap = args[0];
        int expected = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        config.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        config.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");
        String last = "no answer";
        try (Admin admin = Admin.create(config)) {
            while (System.nanoTime() < deadline) {
                try {
                    var cluster = admin.describeCluster(new DescribeClusterOptions().timeoutMs(2000));
                    int brokers = cluster.nodes().get(2, TimeUnit.SECONDS).size();
                    boolean controller = cluster.controller().get(2, TimeUnit.SECONDS) != null;
                    if (brokers >= expected && controller) {
                        System.out.println(brokers + " broker(s) ready at " + bootstrap);
                        return;
                    }
                    last = brokers + " of " + expected + " broker(s) registered"
                        + (controller ? "" : ", no controller");
                } catch (Exception e) {
                    last = e.getCause() != null ? e.getCause().toString() : e.toString();
                }
                Thread.sleep(200);
            }
        }
        System.out.println("not ready at " + bootstrap + ": " + last);
        System.exit(1);
    }
}
