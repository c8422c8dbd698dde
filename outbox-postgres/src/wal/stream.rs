//! The replication connection: where it goes, opening it on a slot, and the task that moves its
//! events to the store and the store's confirmations to the server.

use std::sync::Arc;
use std::time::Duration;

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
}

impl std::fmt::Debug for ReplicationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl ReplicationTarget {
    /// Reads host, port, user, password and database from a `postgres://` URL, as sqlx does (the
    /// password from the user-info or `?password=`, the defaults of libpq for what is missing).
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that is not one, or asks for TLS (not built into the
    /// replication connection).
    pub fn from_url(url: &str) -> Result<Self, Error> {
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
        if let Some(mode) = query("sslmode")
            && !matches!(mode.as_str(), "disable" | "allow" | "prefer")
        {
            return Err(Error::Config(format!(
                "sslmode={mode}: the replication connection of WAL capture does not offer TLS in this build"
            )));
        }
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
            .unwrap_or_default();
        let database = match parsed.path().trim_start_matches('/') {
            "" => query("dbname").unwrap_or_else(|| user.clone()),
            path => decode(path),
        };
        Ok(Self {
            host: query("host")
                .or_else(|| parsed.host_str().map(str::to_owned))
                .unwrap_or_else(|| "localhost".to_owned()),
            port: parsed.port().unwrap_or(5432),
            user,
            password,
            database,
        })
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
