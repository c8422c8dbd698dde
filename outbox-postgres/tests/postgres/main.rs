//! Integration tests of `outbox-postgres` against a real PostgreSQL.
//!
//! Every test runs in a fresh database created by `#[sqlx::test]` (set `DATABASE_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`) and applies the outbox migrations itself.

mod enqueue;
mod horizon;
mod inbox;
mod lanes;
mod migrations;
mod relay_store;
mod retention;
mod support;
mod wake_up;
mod wal;
