//! What a Kafka client reported through its error callback, for the callers that must say it.
//!
//! librdkafka retries every connection quietly. A client whose brokers refuse it as configured —
//! they reject its credentials, its TLS handshake fails (a certificate its CA does not vouch for),
//! they do not offer its SASL mechanism — would retry forever; these errors are kept apart so that
//! the relay's start-up check and the consumer's run can stop at once, saying which connection
//! failed and why.

use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

/// The client's last error, and its last refusal.
#[derive(Debug)]
pub(crate) struct ClientErrors {
    last_error: Mutex<Option<String>>,
    refusal: watch::Sender<Option<String>>,
}

impl Default for ClientErrors {
    fn default() -> Self {
        Self {
            last_error: Mutex::default(),
            refusal: watch::Sender::new(None),
        }
    }
}

impl ClientErrors {
    /// Takes in one error the client reported (from a context's `error` callback).
    pub fn record(&self, error: &KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
        let described = format!("{error}: {reason}");
        if refuses(error) {
            self.refusal.send_replace(Some(described.clone()));
        }
        *outbox_core::sync::lock(&self.last_error) = Some(described);
    }

    /// The client's last error, as librdkafka described it.
    pub fn last_error(&self) -> Option<String> {
        outbox_core::sync::lock(&self.last_error).clone()
    }

    /// The last error that retrying cannot fix, if any.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.borrow().clone()
    }

    /// Waits for a refusal; returns it.
    pub async fn refused(&self) -> String {
        let mut refusal = self.refusal.subscribe();
        let reason = refusal
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|reason| reason.clone());
        match reason {
            Some(reason) => reason,
            // The sender lives in `self`, which outlives this wait: it never closes.
            None => std::future::pending().await,
        }
    }
}

/// Whether `error` says the brokers will not take this client as configured.
fn refuses(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::UnsupportedSASLMechanism
                | RDKafkaErrorCode::IllegalSASLState
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_handshake_is_kept_apart_from_errors_that_pass() {
        let errors = ClientErrors::default();
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(
            errors.refusal(),
            None,
            "a broker that is down may come back"
        );
        assert!(
            errors
                .last_error()
                .is_some_and(|e| e.contains("brokers are down"))
        );
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        assert!(errors.refused().await.contains("Authentication failed"));
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "Disconnected",
        );
        assert!(
            errors
                .refusal()
                .is_some_and(|e| e.contains("Authentication failed")),
            "a later transient error does not hide the refusal"
        );
    }
}
