//! Timestamp precisions of line-protocol writes and their conversion to nanoseconds.

use std::fmt;
use std::str::FromStr;

/// The unit of the timestamps in a write. `Auto` guesses by magnitude, as InfluxDB 3 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    Nanosecond,
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Auto,
}

impl Precision {
    /// Converts a timestamp in this precision to nanoseconds since the epoch, or `None` if
    /// it does not fit in an `i64` of nanoseconds.
    pub fn to_nanos(self, ts: i64) -> Option<i64> {
        let unit = match self {
            Precision::Nanosecond => 1,
            Precision::Microsecond => 1_000,
            Precision::Millisecond => 1_000_000,
            Precision::Second => 1_000_000_000,
            Precision::Minute => 60_000_000_000,
            Precision::Hour => 3_600_000_000_000,
            Precision::Auto => return Self::guess(ts).to_nanos(ts),
        };
        ts.checked_mul(unit)
    }

    /// The precision `Auto` takes for `ts`: the largest unit that puts it after 1971 when
    /// read as seconds, milliseconds or microseconds; nanoseconds otherwise.
    fn guess(ts: i64) -> Precision {
        let magnitude = ts.unsigned_abs();
        if magnitude < 5_000_000_000 {
            Precision::Second
        } else if magnitude < 5_000_000_000_000 {
            Precision::Millisecond
        } else if magnitude < 5_000_000_000_000_000 {
            Precision::Microsecond
        } else {
            Precision::Nanosecond
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    /// Accepts the spellings of InfluxDB's v1 (`n`, `u`, `ms`, `s`, `m`, `h`), v2 (`ns`, `us`,
    /// `ms`, `s`) and v3 (`nanosecond`, ..., `auto`) APIs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "n" | "ns" | "nanosecond" | "nanoseconds" => Precision::Nanosecond,
            "u" | "us" | "µs" | "microsecond" | "microseconds" => Precision::Microsecond,
            "ms" | "millisecond" | "milliseconds" => Precision::Millisecond,
            "s" | "second" | "seconds" => Precision::Second,
            "m" | "minute" | "minutes" => Precision::Minute,
            "h" | "hour" | "hours" => Precision::Hour,
            "auto" => Precision::Auto,
            other => {
                return Err(format!(
                    "invalid precision '{other}': expected one of ns, us, ms, s, m, h, auto"
                ));
            }
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Nanosecond => "ns",
            Precision::Microsecond => "us",
            Precision::Millisecond => "ms",
            Precision::Second => "s",
            Precision::Minute => "m",
            Precision::Hour => "h",
            Precision::Auto => "auto",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_each_unit() {
        assert_eq!(Precision::Second.to_nanos(2), Some(2_000_000_000));
        assert_eq!(Precision::Millisecond.to_nanos(-2), Some(-2_000_000));
        assert_eq!(Precision::Hour.to_nanos(1), Some(3_600_000_000_000));
        assert_eq!(Precision::Second.to_nanos(i64::MAX), None);
    }

    #[test]
    fn auto_guesses_by_magnitude() {
        let ns = 1_700_000_000_123_456_789;
        assert_eq!(
            Precision::Auto.to_nanos(1_700_000_000),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            Precision::Auto.to_nanos(1_700_000_000_123),
            Some(1_700_000_000_123_000_000)
        );
        assert_eq!(
            Precision::Auto.to_nanos(1_700_000_000_123_456),
            Some(1_700_000_000_123_456_000)
        );
        assert_eq!(Precision::Auto.to_nanos(ns), Some(ns));
    }

    #[test]
    fn parses_all_api_spellings() {
        for (s, p) in [
            ("n", Precision::Nanosecond),
            ("u", Precision::Microsecond),
            ("ms", Precision::Millisecond),
            ("second", Precision::Second),
            ("m", Precision::Minute),
            ("h", Precision::Hour),
            ("auto", Precision::Auto),
        ] {
            assert_eq!(s.parse::<Precision>().unwrap(), p);
        }
        assert!(
            "fortnight"
                .parse::<Precision>()
                .unwrap_err()
                .contains("fortnight")
        );
    }
}
