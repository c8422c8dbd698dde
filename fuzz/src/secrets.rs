//! The check that the relay never shows a secret it was given.
//!
//! A secret could also appear in what the relay prints for another reason: another setting holding
//! the same text, or fixed text that happens to match. So the relay's text is compared with its
//! text for the same input with the secret replaced by a marker of the same length: an occurrence
//! of the secret that the marker takes away came from the secret.

/// Whether `name` names a property whose value is a password.
pub(crate) fn is_password(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// The marker that replaces `secret`, or `None` when `secret` is too short to look for (under 8
/// characters) or part of the name it was given under (which the relay may show).
pub(crate) fn marker(name: &str, secret: &str) -> Option<String> {
    let len = secret.chars().count();
    if len < 8 || name.contains(secret) {
        return None;
    }
    // One letter the secret does not hold: no occurrence of the secret can overlap the marker.
    let letter = ('a'..='z')
        .chain('A'..='Z')
        .find(|letter| !secret.contains(*letter))?;
    Some(std::iter::repeat_n(letter, len).collect())
}

/// Panics when `shown`, what the relay printed for an input holding `secret`, holds it more often
/// than `shown_without`, what it printed with `secret` replaced by its marker.
pub(crate) fn assert_not_shown(what: &str, secret: &str, shown: &str, shown_without: &str) {
    let with = shown.matches(secret).count();
    let without = shown_without.matches(secret).count();
    assert!(
        with <= without,
        "the value of {what} is shown: `{secret}` in\n{shown}\n(with a marker instead:\n{shown_without})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_shown_only_because_of_itself_is_caught() {
        let secret = "hunter2hunter2";
        assert!(marker("sasl.password", "short").is_none());
        assert!(
            marker("sasl.password", "password").is_none(),
            "part of the name"
        );
        let marker = marker("sasl.password", secret).expect("long enough");
        assert_eq!(marker.chars().count(), secret.chars().count());
        // The same text elsewhere in the output is no leak.
        assert_not_shown(
            "p",
            secret,
            "lanes `hunter2hunter2`",
            "lanes `hunter2hunter2`",
        );
        let leaked = std::panic::catch_unwind(|| {
            assert_not_shown(
                "p",
                secret,
                "line `hunter2hunter2`",
                "line `aaaaaaaaaaaaaa`",
            );
        });
        assert!(leaked.is_err());
    }
}
