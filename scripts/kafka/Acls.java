import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

/**
 * Grants ACLs through a listener whose principal is a super user. Creating a binding that exists
 * changes nothing, so a second run is harmless.
 *
 * <p>Usage: {@code Acls BOOTSTRAP GRANT...}, each GRANT
 * {@code PRINCIPAL:RESOURCE_TYPE:PATTERN_TYPE:NAME:OPERATION[,OPERATION...]}, for example
 * {@code User:relay:TOPIC:PREFIXED:secure.:WRITE,DESCRIBE} or
 * {@code User:relay:CLUSTER:LITERAL:kafka-cluster:IDEMPOTENT_WRITE}. Exit status 0 when every
 * binding exists, 1 when the broker refused or did not answer, 2 on bad arguments.
 */
public final class Acls {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: Acls BOOTSTRAP PRINCIPAL:RESOURCE_TYPE:PATTERN_TYPE:NAME:OPERATIONS...");
            System.exit(2);
        }
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            // The principal is `User:name`, so the grant has six colon-separated parts.
            String[] parts = args[i].split(":", 6);
            if (parts.length != 6) {
                System.err.println("not PRINCIPAL:RESOURCE_TYPE:PATTERN_TYPE:NAME:OPERATIONS: " + args[i]);
                System.exit(2);
            }
            String principal = parts[0] + ":" + parts[1];
            ResourcePattern resource;
            try {
                resource = new ResourcePattern(
                    ResourceType.valueOf(parts[2]), parts[4], PatternType.valueOf(parts[3]));
            } catch (IllegalArgumentException e) {
                System.err.println("unknown resource or pattern type in " + args[i]);
                System.exit(2);
                return;
            }
            for (String operation : parts[5].split(",")) {
                try {
                    bindings.add(new AclBinding(resource, new AccessControlEntry(
                        principal, "*", AclOperation.valueOf(operation), AclPermissionType.ALLOW)));
                } catch (IllegalArgumentException e) {
                    System.err.println("unknown operation " + operation + " in " + args[i]);
                    System.exit(2);
                }
            }
        }
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        config.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        config.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "20000");
        try (Admin admin = Admin.create(config)) {
            admin.createAcls(bindings).all().get(30, TimeUnit.SECONDS);
        } catch (Exception e) {
            System.out.println("granting ACLs at " + args[0] + " failed: "
                + (e.getCause() != null ? e.getCause() : e));
            System.exit(1);
        }
        System.out.println(bindings.size() + " ACL binding(s) in place at " + args[0]);
    }
}
