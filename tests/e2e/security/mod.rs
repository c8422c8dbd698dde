//! The relay, the library and the consumer over the secured services: PostgreSQL over verified TLS
//! with SCRAM passwords, as roles that may do only what they need; Kafka over SASL_SSL with SCRAM
//! and ACLs. Refusals (a wrong CA, password or mechanism) end the relay at once, naming the
//! connection; planted secrets appear in no output.

mod flow;
mod refusals;
mod secrets;

use std::path::Path;

use outbox_tests::secure::{RELAY_PRINCIPAL, SecureServices, SecuredDb};
use outbox_tests::{RelayProcess, init_logs, run_relay_program_output};

/// The environment variable the relay's Kafka password is read from in these tests.
const KAFKA_PASSWORD_VARIABLE: &str = "OUTBOX_TEST_KAFKA_PASSWORD";

/// The secured services, and a database of the test's own, migrated by its migration role through
/// `outbox-relay migrate` over verified TLS, with every role's grants.
async fn migrated() -> anyhow::Result<(SecureServices, SecuredDb)> {
    init_logs();
    let services = SecureServices::from_env()?;
    let db = SecuredDb::create(&services).await?;
    let (status, stdout, stderr) = run_relay_program_output(
        super::relay_program(),
        &["migrate", "--database-url", &db.url(&db.migrator)],
    )
    .await?;
    anyhow::ensure!(
        status.success() && stdout.contains("applied outbox migrations"),
        "migrate as the migration role over TLS failed: {status}\n{stdout}\n{stderr}"
    );
    db.grant(&outbox_postgres::Tables::default()).await?;
    Ok((services, db))
}

/// `-X` flags for the relay's principal on the SASL_SSL listener, trusting `ca`, its password read
/// from [`KAFKA_PASSWORD_VARIABLE`].
fn relay_kafka_flags(services: &SecureServices, ca: &Path) -> Vec<String> {
    let mut flags = Vec::new();
    for (key, value) in services.kafka_properties(RELAY_PRINCIPAL, ca) {
        flags.push("-X".to_owned());
        flags.push(format!("{key}={value}"));
    }
    flags.push("-X".to_owned());
    flags.push(format!("sasl.password=${{env:{KAFKA_PASSWORD_VARIABLE}}}"));
    flags
}

/// `outbox-relay run` as the relay's role over verified TLS, to the SASL_SSL listener as the
/// relay's principal (its password in [`KAFKA_PASSWORD_VARIABLE`]), with `extra` flags.
fn spawn_secured_relay(
    services: &SecureServices,
    db: &SecuredDb,
    extra: &[&str],
) -> anyhow::Result<RelayProcess> {
    let password = services.kafka_password(RELAY_PRINCIPAL)?.to_owned();
    let kafka_flags = relay_kafka_flags(services, &services.ca);
    let mut flags = extra.to_vec();
    flags.extend(kafka_flags.iter().map(String::as_str));
    RelayProcess::spawn_with_env(
        super::relay_program(),
        &db.url(&db.relay),
        &services.brokers,
        &flags,
        &[(KAFKA_PASSWORD_VARIABLE, &password)],
    )
}
