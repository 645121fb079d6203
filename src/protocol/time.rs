//! Timestamps as the reference server writes them: naive ISO-8601 in UTC.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
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
        let micros = naive.nanosecond() / 1_000;
        if !(0..=9999).contains(&naive.year()) || micros >= 1_000_000 {
            // Years of other widths and leap seconds are left to chrono.
            return match micros {
                0 => write!(f, "{}", naive.format("%Y-%m-%dT%H:%M:%S")),
                _ => write!(f, "{}", naive.format("%Y-%m-%dT%H:%M:%S%.6f")),
            };
        }
        // Every item and event carries a timestamp, so they are written digit by digit rather
        // than through chrono's format strings, which are parsed anew on each call.
        let mut text = *b"0000-00-00T00:00:00.000000";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for slot in text[at..at + width].iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, naive.year().unsigned_abs());
        put(5, 2, naive.month());
        put(8, 2, naive.day());
        put(11, 2, naive.hour());
        put(14, 2, naive.minute());
        put(17, 2, naive.second());
        put(20, 6, micros);
        let end = if micros == 0 { 19 } else { text.len() };
        // Only ASCII digits and separators were written.
        f.write_str(std::str::from_utf8(&text[..end]).map_err(|_| fmt::Error)?)
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

    #[test]
    fn writing_agrees_with_chrono() {
        let now = Timestamp::now();
        let texts = ["2026-11-23T14:16:35", "0001-01-01T00:00:00.000001", "9999-12-31T23:59:59.999999"];
        let more = ["1999-01-01T00:00:00.123456789", "2026-11-23T15:16:35.5+01:00", "2026-11-23T14:16:35.000000999"];
        let mut stamps: Vec<Timestamp> = texts.iter().chain(&more).map(|text| parse(text).unwrap()).collect();
        stamps.push(now);
        for stamp in stamps {
            let naive = stamp.0.naive_utc();
            let expected = match naive.nanosecond() / 1_000 {
                0 => naive.format("%Y-%m-%dT%H:%M:%S").to_string(),
                _ => naive.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            };
            assert_eq!(stamp.to_string(), expected);
        }
    }
}
