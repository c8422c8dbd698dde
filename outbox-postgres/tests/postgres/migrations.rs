//! Migrations: idempotent, serialized, configurable names, refusing a database that is ahead.

use outbox_core::{Inbox, Lease};
use outbox_postgres::{Error, PgInbox, PgOutbox, Tables};
use sqlx::PgPool;

use crate::support::{claim, count, ids, message, migrate, migrate_tables, publish, store_with};

async fn exists(pool: &PgPool, relation: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(pool)
        .await
        .expect("look the relation up")
}

#[sqlx::test(migrations = false)]
async fn migrating_twice_applies_once_then_nothing(pool: PgPool) {
    assert_eq!(migrate(&pool).await, vec![1, 2, 3, 4]);
    assert_eq!(migrate(&pool).await, Vec::<i64>::new());
    for table in [
        "outbox",
        "outbox_dead_letters",
        "inbox",
        "outbox_migrations",
    ] {
        assert!(exists(&pool, table).await, "{table} exists");
    }
    assert_eq!(count(&pool, "outbox_migrations").await, 4);
    let description: String =
        sqlx::query_scalar("SELECT description FROM outbox_migrations WHERE version = 1")
            .fetch_one(&pool)
            .await
            .expect("read the history");
    assert_eq!(description, "create outbox, dead letters and inbox");
}

#[sqlx::test(migrations = false)]
async fn concurrent_migrations_apply_once(pool: PgPool) {
    let tables = Tables::default();
    let mut first = pool.acquire().await.expect("acquire");
    let mut second = pool.acquire().await.expect("acquire");
    let (a, b) = tokio::join!(
        outbox_postgres::migrate(&mut first, &tables),
        outbox_postgres::migrate(&mut second, &tables)
    );
    let mut applied = vec![a.expect("first migrate"), b.expect("second migrate")];
    applied.sort();
    assert_eq!(applied, vec![Vec::new(), vec![1, 2, 3, 4]]);
    assert_eq!(count(&pool, "outbox_migrations").await, 4);
}

#[sqlx::test(migrations = false)]
async fn custom_schema_and_table_names_work_end_to_end(pool: PgPool) {
    sqlx::query("CREATE SCHEMA billing")
        .execute(&pool)
        .await
        .expect("create the schema");
    let tables = Tables::default()
        .schema("billing")
        .and_then(|t| t.outbox("events"))
        .and_then(|t| t.dead_letters("events_dead"))
        .and_then(|t| t.inbox("events_inbox"))
        .and_then(|t| t.migrations("events_schema_history"))
        .expect("valid names");
    let rendered = outbox_postgres::migrations(&tables);
    for placeholder in ["{outbox", "{dead_letters", "{inbox", "{sequence"] {
        assert!(
            rendered.iter().all(|m| !m.sql.contains(placeholder)),
            "{placeholder} is replaced"
        );
    }
    assert!(
        rendered
            .iter()
            .any(|m| m.sql.contains("\"billing\".\"events\""))
    );

    assert_eq!(migrate_tables(&pool, &tables).await, vec![1, 2, 3, 4]);
    assert_eq!(migrate_tables(&pool, &tables).await, Vec::<i64>::new());
    for table in [
        "billing.events",
        "billing.events_dead",
        "billing.events_inbox",
        "billing.events_schema_history",
    ] {
        assert!(exists(&pool, table).await, "{table} exists");
    }
    for table in [
        "public.outbox",
        "public.outbox_dead_letters",
        "public.inbox",
    ] {
        assert!(!exists(&pool, table).await, "{table} was not created");
    }

    let event = message("k", 1);
    let mut tx = pool.begin().await.expect("begin");
    PgOutbox::with_tables(&tables)
        .enqueue(&mut tx, &event)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(count(&pool, "billing.events").await, 1);

    let relay = store_with(&pool, 4, tables.clone());
    let batch = claim(&relay, 10).await;
    assert_eq!(ids(&batch), vec![event.id]);
    assert_eq!(publish(&relay, &batch).await, 1);
    assert_eq!(count(&pool, "billing.events").await, 0);
    relay.close().await;

    let inbox = PgInbox::with_tables(pool.clone(), &tables);
    let mut tx = inbox.begin().await.expect("begin");
    assert!(inbox.record(&mut tx, "c", event.id).await.expect("record"));
    inbox.commit(tx).await.expect("commit");
    assert_eq!(count(&pool, "billing.events_inbox").await, 1);
}

#[sqlx::test(migrations = false)]
async fn two_outboxes_in_one_database_stay_apart(pool: PgPool) {
    let other = Tables::default()
        .outbox("audit_outbox")
        .and_then(|t| t.dead_letters("audit_dead_letters"))
        .and_then(|t| t.inbox("audit_inbox"))
        .and_then(|t| t.migrations("audit_migrations"))
        .expect("valid names");
    assert_eq!(migrate(&pool).await, vec![1, 2, 3, 4]);
    assert_eq!(migrate_tables(&pool, &other).await, vec![1, 2, 3, 4]);

    let default_event = message("k", 1);
    let audit_event = message("k", 2);
    let mut tx = pool.begin().await.expect("begin");
    PgOutbox::new()
        .enqueue(&mut tx, &default_event)
        .await
        .expect("enqueue");
    PgOutbox::with_tables(&other)
        .enqueue(&mut tx, &audit_event)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    // Different lane counts are fine: the relays belong to different outboxes.
    let default_relay = store_with(&pool, 8, Tables::default());
    let audit_relay = store_with(&pool, 16, other);
    assert_eq!(
        ids(&claim(&default_relay, 10).await),
        vec![default_event.id]
    );
    assert_eq!(ids(&claim(&audit_relay, 10).await), vec![audit_event.id]);
    assert_eq!(default_relay.owned_lanes().await.len(), 8);
    assert_eq!(audit_relay.owned_lanes().await.len(), 16);
    default_relay.close().await;
    audit_relay.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_database_with_an_unknown_migration_is_refused(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query(
        "INSERT INTO outbox_migrations (version, description) VALUES (999, 'from the future')",
    )
    .execute(&pool)
    .await
    .expect("record a future migration");
    let mut conn = pool.acquire().await.expect("acquire");
    let err = outbox_postgres::migrate(&mut conn, &Tables::default())
        .await
        .expect_err("the database is ahead of the library");
    assert!(
        matches!(err, Error::UnknownMigration { version: 999 }),
        "{err:?}"
    );
    assert_eq!(count(&pool, "outbox_migrations").await, 5);
}

#[sqlx::test(migrations = false)]
async fn a_missing_schema_fails_the_migration_and_leaves_nothing(pool: PgPool) {
    let tables = Tables::default().schema("nowhere").expect("valid name");
    let mut conn = pool.acquire().await.expect("acquire");
    let err = outbox_postgres::migrate(&mut conn, &tables)
        .await
        .expect_err("the schema does not exist");
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    drop(conn);
    assert!(!exists(&pool, "public.outbox").await);
}
