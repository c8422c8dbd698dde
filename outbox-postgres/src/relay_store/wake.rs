//! Wake-ups: `LISTEN` on the outbox's channel, on a connection of the pool.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::PgRelayStore;

impl PgRelayStore {
    pub(super) async fn wait(&self, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut listener = self.listener.lock().await;
        if listener.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut fresh) => match fresh.listen(&self.channel).await {
                    Ok(()) => *listener = Some(fresh),
                    Err(error) => tracing::warn!(%error, "LISTEN failed; polling"),
                },
                Err(error) => {
                    tracing::warn!(%error, "could not open the wake-up connection; polling")
                }
            }
        }
        let Some(active) = listener.as_mut() else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        match tokio::time::timeout_at(deadline, active.try_recv()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) => tokio::time::sleep_until(deadline).await,
            Ok(Err(error)) => {
                tracing::warn!(%error, "wake-up connection failed; polling");
                *listener = None;
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}
