//! The connection settings of the relay's own sessions, whose `Debug` leaves the password out.

use std::ops::Deref;

use sqlx::postgres::PgConnectOptions;

/// `PgConnectOptions` for a session outside the pool. sqlx's own `Debug` prints the password; this
/// one prints where the session goes and as whom.
#[derive(Clone)]
pub(crate) struct SessionOptions(PgConnectOptions);

impl SessionOptions {
    /// The pool's settings, named as the relay in `pg_stat_activity`.
    pub fn of(pool: &sqlx::PgPool) -> Self {
        Self(
            (*pool.connect_options())
                .clone()
                .application_name("outbox-relay"),
        )
    }
}

impl Deref for SessionOptions {
    type Target = PgConnectOptions;

    fn deref(&self) -> &PgConnectOptions {
        &self.0
    }
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("host", &self.0.get_host())
            .field("port", &self.0.get_port())
            .field("database", &self.0.get_database())
            .field("username", &self.0.get_username())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn the_password_is_not_in_the_debug_output() {
        let options = PgConnectOptions::from_str(
            "postgres://app:hunter2@db.example:5433/orders?password=hunter3",
        )
        .expect("a URL");
        let shown = format!("{:?}", SessionOptions(options));
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(
            shown.contains("db.example") && shown.contains("5433") && shown.contains("app"),
            "{shown}"
        );
    }
}
