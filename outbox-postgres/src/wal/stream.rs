//! The replication connection: where it goes, opening it on a slot, and the task that moves its
//! events to the store and the store's confirmations to the server.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::config::{SslMode, TlsConfig};
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::slot::{REPLICATION_APPLICATION_NAME, SlotName};
use crate::error::Error;

/// Events decoded but not yet taken by the store; a full buffer stops reading the socket, so the
/// server waits (TCP back-pressure) while the client still answers keepalives.
const EVENT_BUFFER: usize = 256;

/// Where the replication connection goes, taken from the database URL. Its `Debug` leaves the
/// password out.
#[derive(Clone)]
pub struct ReplicationTarget {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tls: TlsConfig,
}

impl std::fmt::Debug for ReplicationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("sslmode", &self.tls.mode)
            .field("sslrootcert", &self.tls.ca_pem_path)
            .finish_non_exhaustive()
    }
}

impl ReplicationTarget {
    /// Reads host, port, user, password, database and TLS settings from a `postgres://` URL, as
    /// sqlx does for the pool: the password from the user-info or `?password=`, else `PGPASSWORD`;
    /// `sslmode` (`disable`, `allow`, `prefer` — the default —, `require`, `verify-ca`,
    /// `verify-full`) and `sslrootcert`, else `PGSSLMODE` and `PGSSLROOTCERT`; libpq's defaults
    /// for what is missing.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that is not one, or an unknown `sslmode`.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Self::from_url_and_env(url, &|name| std::env::var(name).ok())
    }

    fn from_url_and_env(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::Config(format!(
                "the database URL is not a URL ({e}); use postgres://user@host:5432/db"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(Error::Config(format!(
                "the database URL has scheme `{}`; use postgres://",
                parsed.scheme()
            )));
        }
        let query = |name: &str| {
            parsed
                .query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("x={text}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        let user = match parsed.username() {
            "" => query("user").unwrap_or_else(|| "postgres".to_owned()),
            user => decode(user),
        };
        let password = parsed
            .password()
            .map(decode)
            .or_else(|| query("password"))
            .or_else(|| env("PGPASSWORD"))
            .unwrap_or_default();
        let database = match parsed.path().trim_start_matches('/') {
            "" => query("dbname").unwrap_or_else(|| user.clone()),
            path => decode(path),
        };
        let mode = query("sslmode")
            .or_else(|| env("PGSSLMODE"))
            .unwrap_or_else(|| "prefer".to_owned());
        let root_cert = query("sslrootcert")
            .or_else(|| env("PGSSLROOTCERT"))
            .map(std::path::PathBuf::from);
        let tls = match mode.as_str() {
            "disable" => TlsConfig::disabled(),
            // `allow` tries without TLS first; the server's answer decides either way.
            "allow" | "prefer" => TlsConfig {
                mode: SslMode::Prefer,
                ..TlsConfig::default()
            },
            "require" => TlsConfig::require(),
            "verify-ca" => TlsConfig::verify_ca(root_cert),
            "verify-full" => TlsConfig::verify_full(root_cert),
            other => {
                return Err(Error::Config(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        let host = query("host")
            .or_else(|| parsed.host_str().map(str::to_owned))
            .unwrap_or_else(|| "localhost".to_owned());
        // An address is checked against the certificate's IP addresses, as libpq does; the
        // client checks only the name it sends, so the address is sent as that name.
        let tls = if tls.mode == SslMode::VerifyFull && host.parse::<std::net::IpAddr>().is_ok() {
            tls.with_sni_hostname(host.clone())
        } else {
            tls
        };
        Ok(Self {
            host,
            port: parsed.port().unwrap_or(5432),
            user,
            password,
            database,
            tls,
        })
    }
}

/// The slot the probe of a replication connection asks for; no outbox creates it (slot names of
/// the relay's settings are the user's, and this one is reserved here).
const PROBE_SLOT: &str = "outbox_probe_of_the_replication_connection";

impl ReplicationTarget {
    /// Makes a replication connection and asks to stream from a slot that does not exist. The
    /// server answers that only after the TLS handshake and the login succeeded, so the answer
    /// proves the connection can be made — with no slot touched, and whoever reads the real slot
    /// left alone.
    ///
    /// # Errors
    /// [`Error::ReplicationConnection`] with the client's error otherwise (a certificate the CA
    /// does not vouch for, a wrong password, no `replication` line in `pg_hba.conf`, no answer
    /// within `timeout`).
    pub(crate) async fn probe(&self, timeout: Duration) -> Result<(), Error> {
        let failed = |source| Error::ReplicationConnection {
            target: format!(
                "{}@{}:{}/{}",
                self.user, self.host, self.port, self.database
            ),
            source,
        };
        let config = ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.database.clone(),
            PROBE_SLOT,
            PROBE_SLOT,
        )
        .with_port(self.port)
        .with_tls(self.tls.clone())
        .with_application_name(REPLICATION_APPLICATION_NAME);
        let mut client = ReplicationClient::connect(config).await.map_err(failed)?;
        let answer = tokio::time::timeout(timeout, client.wait_started()).await;
        client.abort();
        match answer {
            // Undefined object: the slot does not exist, which only a logged-in session learns.
            Ok(Err(PgWireError::Server(message))) if message.contains("SQLSTATE 42704") => Ok(()),
            // Someone made the slot after all: the connection works just as well.
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(failed(error)),
            Err(_) => Err(failed(PgWireError::Task(format!(
                "no answer within {timeout:?}"
            )))),
        }
    }
}

/// An open replication stream on a slot.
pub(crate) struct Stream {
    events: mpsc::Receiver<Result<ReplicationEvent, PgWireError>>,
    confirm: watch::Sender<u64>,
    stop: CancellationToken,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

/// What taking the next event found.
pub(crate) enum Next {
    Event(ReplicationEvent),
    /// Nothing decoded yet.
    Empty,
    /// The stream ended; its error if it failed.
    Ended(Option<PgWireError>),
}

impl Stream {
    /// Starts replication on `slot` from its confirmed position, and returns once the server holds
    /// the slot for this connection. `arrived` is notified whenever an event is ready.
    pub async fn open(
        target: &ReplicationTarget,
        slot: &SlotName,
        status_interval: Duration,
        timeout: Duration,
        arrived: Arc<Notify>,
    ) -> Result<Self, Error> {
        let failed = |source| Error::Replication {
            slot: slot.to_string(),
            source,
        };
        let config = ReplicationConfig::new(
            target.host.clone(),
            target.user.clone(),
            target.password.clone(),
            target.database.clone(),
            slot.as_str(),
            slot.as_str(),
        )
        .with_port(target.port)
        .with_tls(target.tls.clone())
        // Lsn 0: the server starts from the slot's confirmed position.
        .with_start_lsn(Lsn(0))
        .with_status_interval(status_interval)
        .with_wakeup_interval(status_interval)
        .with_buffer_size(EVENT_BUFFER)
        .with_application_name(REPLICATION_APPLICATION_NAME);
        let mut client = ReplicationClient::connect(config).await.map_err(failed)?;
        match tokio::time::timeout(timeout, client.wait_started()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(failed(error)),
            Err(_) => {
                client.abort();
                return Err(failed(PgWireError::Task(format!(
                    "the server did not start replication within {timeout:?}"
                ))));
            }
        }
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (confirm, confirmed) = watch::channel(0);
        let stop = CancellationToken::new();
        let pump = tokio::spawn(pump(client, events_tx, confirmed, stop.clone(), arrived));
        Ok(Self {
            events,
            confirm,
            stop,
            pump: Some(pump),
        })
    }

    /// The next event, without waiting.
    pub fn next(&mut self) -> Next {
        match self.events.try_recv() {
            Ok(Ok(event)) => Next::Event(event),
            Ok(Err(error)) => Next::Ended(Some(error)),
            Err(mpsc::error::TryRecvError::Empty) => Next::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => Next::Ended(None),
        }
    }

    /// Reports everything up to `lsn` as flushed; the server may recycle the WAL before it, and a
    /// new stream starts after it.
    pub fn confirm(&self, lsn: u64) {
        self.confirm.send_if_modified(|confirmed| {
            let raised = lsn > *confirmed;
            if raised {
                *confirmed = lsn;
            }
            raised
        });
    }

    /// Ends the connection: gracefully (a last status update, then CopyDone) or at once.
    pub async fn close(mut self, graceful: bool) {
        let Some(pump) = self.pump.take() else {
            return;
        };
        if !graceful {
            pump.abort();
        }
        self.stop.cancel();
        if let Err(error) = pump.await
            && !error.is_cancelled()
        {
            tracing::warn!(%error, "the replication task failed");
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Hands the newest confirmed position to the client; returns whether more can come.
fn forward(open: bool, client: &ReplicationClient, confirmed: &mut watch::Receiver<u64>) -> bool {
    client.update_applied_lsn(Lsn(*confirmed.borrow_and_update()));
    open
}

/// Moves events from the client to the store, reserving room first so that no event is held
/// outside the bounded channel, and confirmations from the store to the client meanwhile.
async fn pump(
    mut client: ReplicationClient,
    events: mpsc::Sender<Result<ReplicationEvent, PgWireError>>,
    mut confirmed: watch::Receiver<u64>,
    stop: CancellationToken,
    arrived: Arc<Notify>,
) {
    let mut confirming = true;
    loop {
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = confirmed.changed(), if confirming => {
                confirming = forward(changed.is_ok(), &client, &mut confirmed);
                continue;
            }
            permit = events.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = confirmed.changed(), if confirming => {
                confirming = forward(changed.is_ok(), &client, &mut confirmed);
                continue;
            }
            received = client.recv() => received,
        };
        match received {
            Ok(Some(event)) => {
                permit.send(Ok(event));
                arrived.notify_one();
            }
            Ok(None) => break,
            Err(error) => {
                permit.send(Err(error));
                arrived.notify_one();
                return;
            }
        }
    }
    client.update_applied_lsn(Lsn(*confirmed.borrow()));
    if let Err(error) = client.shutdown().await {
        tracing::debug!(%error, "the replication stream ended with an error");
    }
    arrived.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, env: &[(&str, &str)]) -> ReplicationTarget {
        ReplicationTarget::from_url_and_env(url, &|name| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
        .expect("a valid URL")
    }

    #[test]
    fn tls_and_the_password_come_from_the_url_else_from_libpq_variables() {
        let given = target(
            "postgres://relay:s%40cret@db.example:6543/orders?sslmode=verify-full&sslrootcert=/ca.pem",
            &[("PGPASSWORD", "other"), ("PGSSLMODE", "disable")],
        );
        assert_eq!(given.password, "s@cret");
        assert_eq!(given.tls, TlsConfig::verify_full(Some("/ca.pem".into())));
        assert_eq!((given.host.as_str(), given.port), ("db.example", 6543));
        assert!(!format!("{given:?}").contains("s@cret"), "{given:?}");

        let from_env = target(
            "postgres://relay@db/orders",
            &[
                ("PGPASSWORD", "from-env"),
                ("PGSSLMODE", "verify-ca"),
                ("PGSSLROOTCERT", "/env-ca.pem"),
            ],
        );
        assert_eq!(from_env.password, "from-env");
        assert_eq!(
            from_env.tls,
            TlsConfig::verify_ca(Some("/env-ca.pem".into()))
        );

        let plain = target("postgres://relay@db/orders", &[]);
        assert_eq!(
            plain.tls.mode,
            SslMode::Prefer,
            "libpq's and sqlx's default"
        );
        assert_eq!(
            target("postgres://relay@db/orders?sslmode=disable", &[]).tls,
            TlsConfig::disabled()
        );
    }

    #[test]
    fn an_unknown_sslmode_is_refused_by_name() {
        let error =
            ReplicationTarget::from_url_and_env("postgres://db/x?sslmode=strict", &|_| None)
                .expect_err("unknown mode")
                .to_string();
        assert!(error.contains("sslmode=strict"), "{error}");
    }
}
