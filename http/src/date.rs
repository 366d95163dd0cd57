//! The `Date` header value (RFC 9110 §5.6.7 IMF-fixdate), formatted at most once a second.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
thread_local! {
    /// How often this thread formatted a date (to test the cache).
    static FORMATTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// (unix second, its formatted date). Per thread: workers are single-threaded and a lock
    /// would cost more than the formatting it saves.
    static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The `Date` header value for now, recomputed at most once a second.
pub fn http_date() -> String {
    with_http_date(str::to_owned)
}

/// Call `f` with the cached date for now, without allocating.
pub(crate) fn with_http_date<R>(f: impl FnOnce(&str) -> R) -> R {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != now {
            *cache = (now, format_http_date(now));
            #[cfg(test)]
            FORMATTED.with(|n| n.set(n.get() + 1));
        }
        f(&cache.1)
    })
}

/// Format unix seconds as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format_http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A UTC calendar time, for log lines that want another format than HTTP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// The year, e.g. 2024.
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59 (no leap seconds in Unix time).
    pub second: u32,
}

impl UtcTime {
    /// Unix seconds to the UTC calendar.
    pub fn from_unix(secs: u64) -> Self {
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = (secs % 86_400) as u32;
        UtcTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            format_http_date(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            format_http_date(4_102_444_799),
            "Thu, 31 Dec 2099 23:59:59 GMT"
        );
    }

    #[test]
    fn formatted_at_most_once_a_second() {
        let secs = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let (start, before) = (secs(), FORMATTED.with(|n| n.get()));
        for _ in 0..10_000 {
            http_date();
        }
        let (end, after) = (secs(), FORMATTED.with(|n| n.get()));
        // One format per distinct second seen, however many calls.
        assert!(
            after - before <= end - start + 1,
            "{} formats in {} s",
            after - before,
            end - start
        );
    }

    #[test]
    fn http_date_is_now() {
        let d = http_date();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The cache may have turned over between the two reads.
        assert!(
            d == format_http_date(now)
                || d == format_http_date(now - 1)
                || d == format_http_date(now + 1)
        );
    }
}
