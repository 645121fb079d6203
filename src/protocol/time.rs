//! Timestamps as the reference server writes them: naive ISO-8601 in UTC.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, always held in UTC.
///
/// The reference SDK serializes Python `datetime` values, which print as
/// `2026-11-23T14:16:35.239443` (fraction dropped when it is zero). We write the
/// same shape so that a re-serialization by the reference types is identical,
/// and we accept an explicit offset too, because clients parse by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        // Microsecond precision is all the wire format carries; truncating here
        // keeps a stored value equal to what a client reads back.
        let now = Utc::now();
        let micros = now.timestamp_micros();
        Timestamp(DateTime::from_timestamp_micros(micros).unwrap_or(now))
    }

    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let naive = self.0.naive_utc();
        if naive.nanosecond() / 1_000 == 0 {
            write!(f, "{}", naive.format("%Y-%m-%dT%H:%M:%S"))
        } else {
            write!(f, "{}", naive.format("%Y-%m-%dT%H:%M:%S%.6f"))
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| de::Error::custom(format!("invalid datetime `{text}`")))
    }
}

fn parse(text: &str) -> Option<Timestamp> {
    // Our own format is by far the most common input (every stored record);
    // reading it by hand is several times faster than chrono's general parsers.
    if let Some(fast) = parse_naive(text.as_bytes()) {
        return Some(fast);
    }
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
        return Some(Timestamp(with_offset.with_timezone(&Utc)));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|naive| Timestamp(naive.and_utc()))
}

/// Reads `YYYY-MM-DDTHH:MM:SS` with an optional fraction of up to 9 digits.
fn parse_naive(text: &[u8]) -> Option<Timestamp> {
    fn number(digits: &[u8]) -> Option<u32> {
        digits.iter().try_fold(0u32, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0')))
    }
    if text.len() < 19 || text[4] != b'-' || text[7] != b'-' || text[10] != b'T' || text[13] != b':' || text[16] != b':'
    {
        return None;
    }
    let nanos = match &text[19..] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            number(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(number(&text[0..4])? as i32, number(&text[5..7])?, number(&text[8..10])?)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(
        number(&text[11..13])?,
        number(&text[14..16])?,
        number(&text[17..19])?,
        nanos,
    )?;
    Some(Timestamp(date.and_time(time).and_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_python_isoformat() {
        let t: Timestamp = serde_json::from_str("\"2026-11-23T14:16:35.239443\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"2026-11-23T14:16:35.239443\"");
        let whole: Timestamp = serde_json::from_str("\"2026-11-23T14:16:35\"").unwrap();
        assert_eq!(whole.to_string(), "2026-11-23T14:16:35");
    }

    #[test]
    fn accepts_an_explicit_offset() {
        let t: Timestamp = serde_json::from_str("\"2026-11-23T15:16:35.5+01:00\"").unwrap();
        assert_eq!(t.to_string(), "2026-11-23T14:16:35.500000");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["yesterday", "2026-13-01T00:00:00", "2026-11-23T14:16:35.", "2026-11-23T14:16:35Zulu"] {
            assert!(serde_json::from_str::<Timestamp>(&format!("\"{bad}\"")).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_chrono() {
        for text in [
            "2026-11-23T14:16:35",
            "2026-11-23T14:16:35.5",
            "2026-02-28T23:59:59.000001",
            "1999-01-01T00:00:00.123456789",
        ] {
            let slow = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").unwrap().and_utc();
            assert_eq!(parse_naive(text.as_bytes()), Some(Timestamp(slow)), "{text}");
        }
    }
}
