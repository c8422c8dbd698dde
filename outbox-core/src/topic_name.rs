//! Kafka's rules for a topic name, in one place: the writer checks each message's topic with them
//! (`Message::validate`), and the relay's topic route its template and every name it routes to.

/// Kafka's longest topic name.
pub const MAX_LEN: usize = 249;

/// Whether `c` may be part of a topic name: ASCII letters, digits, `.`, `_` and `-`.
pub fn allows(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Why `name` is not a topic name Kafka accepts, or `None` when it is one: 1 to [`MAX_LEN`]
/// characters that [`allows`], and neither `.` nor `..`.
pub fn refusal(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("topic is empty".into());
    }
    if name.len() > MAX_LEN {
        return Some(format!(
            "topic is {} characters long; Kafka allows at most {MAX_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("topic `{name}` is not allowed"));
    }
    name.chars().find(|c| !allows(*c)).map(|bad| {
        format!(
            "topic `{name}` contains `{bad}`; Kafka allows only letters, digits, `.`, `_` and `-`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_is_named() {
        assert_eq!(refusal("orders.v1_x-y"), None);
        assert_eq!(refusal(&"x".repeat(MAX_LEN)), None);
        for (name, says) in [
            ("", "empty"),
            ("..", "not allowed"),
            ("a/b", "contains `/`"),
            (&"x".repeat(MAX_LEN + 1), "at most 249"),
        ] {
            let why = refusal(name).unwrap_or_default();
            assert!(why.contains(says), "{name}: {why}");
        }
    }
}
