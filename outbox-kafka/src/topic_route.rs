//! Which Kafka topic a message goes to: its own topic, or a template around it.

use std::borrow::Cow;

use outbox_core::topic_name;

use crate::error::Error;

/// The placeholder a template replaces with the message's topic.
pub const PLACEHOLDER: &str = "{topic}";

/// Maps a message's topic to the Kafka topic it is published to.
///
/// `{topic}` (the default) publishes to the message's own topic; `outbox.event.{topic}` adds a prefix;
/// a template without the placeholder sends every message to that one topic. Outside the
/// placeholder a template may hold only what a Kafka topic name may: ASCII letters, digits, `.`,
/// `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    prefix: String,
    /// `None` when the template has no placeholder: every message goes to `prefix`.
    suffix: Option<String>,
}

impl Default for TopicRoute {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            suffix: Some(String::new()),
        }
    }
}

impl TopicRoute {
    /// Parses a template.
    ///
    /// # Errors
    /// [`Error::InvalidTopicRoute`] for an empty template, more than one placeholder, a brace that
    /// is not part of `{topic}`, a character a topic name cannot hold, or a fixed topic that is too
    /// long or is `.` or `..`.
    pub fn parse(template: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidTopicRoute {
            template: template.to_owned(),
            reason: reason.to_owned(),
        };
        if template.is_empty() {
            return Err(invalid("it is empty"));
        }
        let mut parts = template.splitn(2, PLACEHOLDER);
        let prefix = parts.next().unwrap_or_default().to_owned();
        let suffix = parts.next().map(str::to_owned);
        for part in std::iter::once(&prefix).chain(&suffix) {
            if part.contains(PLACEHOLDER) {
                return Err(invalid("it may hold `{topic}` at most once"));
            }
            if let Some(bad) = part.chars().find(|c| !topic_name::allows(*c)) {
                return Err(invalid(&format!(
                    "`{bad}` cannot be part of a topic name (allowed: ASCII letters, digits, `.`, `_`, `-` and the placeholder `{{topic}}`)"
                )));
            }
        }
        if suffix.is_none()
            && let Some(why) = topic_name::refusal(&prefix)
        {
            return Err(invalid(&why));
        }
        Ok(Self { prefix, suffix })
    }

    /// The Kafka topic for a message whose topic is `topic`.
    ///
    /// # Errors
    /// A text saying why when the routed name is longer than Kafka allows (the message's topic was
    /// validated when it was enqueued, so only the template's additions can make it too long).
    pub fn route<'a>(&'a self, topic: &'a str) -> Result<Cow<'a, str>, String> {
        let routed = match &self.suffix {
            None => Cow::Borrowed(self.prefix.as_str()),
            Some(suffix) if self.prefix.is_empty() && suffix.is_empty() => Cow::Borrowed(topic),
            Some(suffix) => Cow::Owned(format!("{}{topic}{suffix}", self.prefix)),
        };
        if let Some(why) = topic_name::refusal(&routed) {
            return Err(format!("routed from `{topic}`: {why}"));
        }
        Ok(routed)
    }
}

impl std::fmt::Display for TopicRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.suffix {
            None => f.write_str(&self.prefix),
            Some(suffix) => write!(f, "{}{PLACEHOLDER}{suffix}", self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_the_message_topic() {
        let route = TopicRoute::default();
        assert_eq!(route.route("orders").as_deref(), Ok("orders"));
        assert_eq!(route.to_string(), "{topic}");
        assert_eq!(TopicRoute::parse("{topic}").expect("valid"), route);
    }

    #[test]
    fn templates_wrap_or_replace_the_topic() {
        let prefixed = TopicRoute::parse("outbox.event.{topic}").expect("valid");
        assert_eq!(
            prefixed.route("orders").as_deref(),
            Ok("outbox.event.orders")
        );
        let wrapped = TopicRoute::parse("svc-{topic}-v1").expect("valid");
        assert_eq!(wrapped.route("orders").as_deref(), Ok("svc-orders-v1"));
        let fixed = TopicRoute::parse("all_events").expect("valid");
        assert_eq!(fixed.route("orders").as_deref(), Ok("all_events"));
        assert_eq!(fixed.to_string(), "all_events");
        assert_eq!(prefixed.to_string(), "outbox.event.{topic}");
    }

    #[test]
    fn bad_templates_say_what_is_allowed() {
        for (template, says) in [
            ("", "empty"),
            ("{topic}.{topic}", "at most once"),
            ("events/{topic}", "`/` cannot be part"),
            ("{Topic}", "`{` cannot be part"),
            ("..", "not allowed"),
        ] {
            let error = TopicRoute::parse(template).expect_err(template).to_string();
            assert!(error.contains(says), "{template}: {error}");
            assert!(error.contains(&format!("`{template}`")), "{error}");
        }
        let long = "x".repeat(250);
        assert!(TopicRoute::parse(&long).is_err());
    }

    #[test]
    fn a_routed_name_too_long_for_kafka_is_an_error_not_a_panic() {
        let route = TopicRoute::parse(&format!("{}{{topic}}", "p".repeat(200))).expect("valid");
        assert!(route.route(&"t".repeat(40)).is_ok());
        let error = route.route(&"t".repeat(60)).expect_err("too long");
        assert!(error.contains("249"), "{error}");
    }
}
