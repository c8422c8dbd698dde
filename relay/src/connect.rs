//! Reaching the database and the brokers at start-up, within a bounded wait.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use outbox_postgres::Tables;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::time::Instant;

use crate::settings::Database;

/// The URL with its password replaced, for messages: in the user-info and in the query (`password`,
/// as libpq and sqlx accept it, in any case).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let secret = |key: &str| key.eq_ignore_ascii_case("password");
            if parsed.query_pairs().any(|(key, _)| secret(&key)) {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if secret(&key) {
                            "***".into()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// Connects one connection's pool and checks the outbox tables exist; returns them with it.
pub async fn open(database: &Database) -> anyhow::Result<(PgPool, Tables)> {
    let pool = self::database(database, 1).await?;
    require_schema(&pool, &database.tables).await?;
    Ok((pool, database.tables.clone()))
}

/// Connects a pool, retrying until `args.connect_timeout` has passed.
pub async fn database(args: &Database, pool_size: u32) -> anyhow::Result<PgPool> {
    let shown = redact(&args.url);
    let options = PgConnectOptions::from_str(&args.url)
        .with_context(|| format!("invalid --database-url / DATABASE_URL `{shown}`"))?
        .application_name("outbox-relay");
    let deadline = Instant::now() + args.connect_timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(
                args.connect_timeout
                    .clamp(Duration::from_millis(100), Duration::from_secs(10)),
            )
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(error) if refused(&error) => {
                return Err(anyhow!(error)).with_context(|| {
                    format!(
                        "PostgreSQL at `{shown}` refused the connection (retrying would not help)"
                    )
                });
            }
            Err(error) if Instant::now() + delay < deadline => {
                tracing::warn!(database = %shown, %error, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                return Err(anyhow!(error)).with_context(|| {
                    format!(
                        "could not reach PostgreSQL at `{shown}` within {:?}",
                        args.connect_timeout
                    )
                });
            }
        }
    }
}

/// Whether a failed connection attempt is one that retrying cannot fix: the TLS handshake failed
/// (a certificate the CA does not vouch for, a name it does not cover, a server without TLS when
/// TLS is required), or the server refused the login (class 28: a wrong password, no `pg_hba.conf`
/// entry for this role and encryption).
fn refused(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        // How the TLS layer reports a certificate it does not accept.
        sqlx::Error::Io(error) => error.kind() == std::io::ErrorKind::InvalidData,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| code.starts_with("28")),
        _ => false,
    }
}

/// Fails with a hint when the outbox tables are missing or not migrated to this version.
pub async fn require_schema(pool: &PgPool, tables: &Tables) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let pending = outbox_postgres::pending_migrations(&mut conn, tables)
        .await
        .context("checking the outbox schema")?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the outbox schema lacks migrations {pending:?} (tables {}); run `outbox-relay migrate` first",
            tables.outbox_table()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_wherever_the_url_carries_them() {
        for url in [
            "postgres://app:hunter2@127.0.0.1/db",
            "postgres://app@127.0.0.1/db?password=hunter2",
            "postgres://app@127.0.0.1/db?sslmode=disable&PASSWORD=hunter2&application_name=x",
            "postgres://app:hunter1@127.0.0.1/db?password=hunter2",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("hunter"), "{url} shown as {shown}");
            assert!(shown.contains("127.0.0.1"), "{shown}");
        }
        assert!(redact("postgres://app@h/db?sslmode=disable").contains("sslmode=disable"));
    }
}
