//! The one way a duration is written in Drover's configuration and on its
//! command lines, every variable and every flag alike: humantime's syntax
//! (`250ms`, `10s`, `1.5s`, `2m`, `1h 30m`, `7d`), and a bare number
//! means seconds (`30` is `30s`), as it always has.

use std::time::Duration;

/// Parses a duration; the error says what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let text = text.trim();
    let invalid = |why: String| InvalidDuration {
        text: text.to_owned(),
        why,
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|err| invalid(err.to_string()));
    }
    humantime::parse_duration(text).map_err(|err| invalid(err.to_string()))
}

/// A duration [`parse_duration`] does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration like 250ms, 10s, 1.5s, 2m, 1h or 7d ({why})")]
pub struct InvalidDuration {
    /// What was given.
    pub text: String,
    /// What the parser found wrong.
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_and_a_bare_number_is_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 250ms "), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "ten", "s", "-1s", "10 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
