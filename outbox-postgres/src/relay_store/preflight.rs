//! What the relay checks of the database before it holds anything: a connection pooler that would
//! break its session, and a schema that would break the publish horizon.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use crate::error::Error;
use crate::queries::Queries;

/// Every check, on `conn`, before it holds anything: the pooler first (the schema check's answer
/// would mean nothing through one), then the schema.
pub(super) async fn run(
    conn: &mut PgConnection,
    connect: &PgConnectOptions,
    queries: &Queries,
) -> Result<(), Error> {
    refuse_poolers(conn, connect).await?;
    check_schema(conn, queries).await
}

/// Refuses a connection whose statements do not all reach one server backend of its own: a pooler
/// in transaction or statement mode (PgBouncer, for instance) hands each transaction to whichever
/// backend is free, so session advisory locks (lane ownership), `LISTEN` and the session's
/// timeouts would stay with a backend other clients then use.
///
/// Two signs, either one enough: the backend changes between two statements of `session`, or
/// another connection, opened with `connect` for the purpose (not from the pool, whose connections
/// may all be taken), reaches `session`'s backend. The probes use the simple query protocol, which
/// poolers pass through whatever their mode.
pub(crate) async fn refuse_poolers(
    session: &mut PgConnection,
    connect: &PgConnectOptions,
) -> Result<(), Error> {
    let first = backend_pid(&mut *session).await?;
    let other = {
        let mut conn = PgConnection::connect_with(connect).await?;
        let pid = backend_pid(&mut conn).await;
        if let Err(error) = conn.close().await {
            tracing::debug!(%error, "closing the pooler probe's connection failed");
        }
        pid?
    };
    let second = backend_pid(&mut *session).await?;
    let reason = if first != second {
        format!(
            "one connection's statements reached two server backends (pids {first} and {second})"
        )
    } else if other == first {
        format!("two connections reached one server backend (pid {first})")
    } else {
        return Ok(());
    };
    Err(Error::Unsupported(format!(
        "the relay's database connection goes through a pooler in transaction or statement mode: {reason}. \
         The relay holds its lanes with session advisory locks, which such a pooler breaks; connect \
         it to PostgreSQL directly or through a pooler in session mode (PgBouncer `pool_mode = session`)"
    )))
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32, Error> {
    let row = sqlx::Executor::fetch_one(conn, sqlx::raw_sql("SELECT pg_backend_pid()")).await?;
    Ok(row.try_get(0)?)
}

/// Refuses a schema the publish horizon cannot rely on: a sequence that hands out blocks of
/// numbers (a session could number a row long after the horizon passed its number), or a `seq`
/// default that does not take the writer lock (rows written without the library would bypass it).
async fn check_schema(conn: &mut PgConnection, queries: &Queries) -> Result<(), Error> {
    let row = sqlx::Executor::fetch_one(conn, sqlx::raw_sql(&queries.schema_check)).await?;
    let cache: Option<i64> = row.try_get(0)?;
    let default: Option<String> = row.try_get(1)?;
    let sequence = &queries.names.sequence;
    match cache {
        None => {
            return Err(Error::Unsupported(format!(
                "the outbox's sequence {sequence} does not exist or cannot be read; run `outbox-relay migrate`"
            )));
        }
        Some(cache) if cache != 1 => {
            return Err(Error::Unsupported(format!(
                "the outbox's sequence {sequence} caches {cache} numbers per session; the publish horizon needs \
                 one at a time: ALTER SEQUENCE {sequence} CACHE 1"
            )));
        }
        Some(_) => {}
    }
    let function = &queries.names.next_seq_function_bare;
    if !default
        .as_deref()
        .is_some_and(|d| d.contains(function.as_str()))
    {
        return Err(Error::Unsupported(format!(
            "the outbox's seq column defaults to `{}` instead of {}(), which takes the writer lock the publish \
             horizon needs; run `outbox-relay migrate`, or restore it: ALTER TABLE {} ALTER COLUMN seq SET DEFAULT {}()",
            default.as_deref().unwrap_or("nothing"),
            queries.names.next_seq_function,
            queries.names.outbox,
            queries.names.next_seq_function,
        )));
    }
    Ok(())
}
