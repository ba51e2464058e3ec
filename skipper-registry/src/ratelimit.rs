//! Reading how long a registry wants us to wait: `Retry-After`, `RateLimit-*`, `X-RateLimit-*`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// The bounded backoff applied to `429 Too Many Requests`.
///
/// A 429 is retried after the wait the registry names (`Retry-After`, `RateLimit-Reset`,
/// `X-RateLimit-Reset`, or the `t=` of a structured `RateLimit` header), or after an exponential
/// backoff of 1 s, 2 s, 4 s, … when it names none. A wait longer than [`max_wait`](Self::max_wait),
/// or a 429 on the last of [`max_attempts`](Self::max_attempts), ends the call with
/// [`RegistryError::RateLimited`](crate::RegistryError::RateLimited) carrying the wait asked for,
/// so the caller (the poll loop) can come back later instead of blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Requests sent at most for one call, the first included (at least 1).
    pub max_attempts: u32,
    /// The longest single wait this client will sleep.
    pub max_wait: Duration,
}

impl Default for RateLimitPolicy {
    /// 3 attempts, waits of at most 30 seconds.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_wait: Duration::from_secs(30),
        }
    }
}

impl RateLimitPolicy {
    /// Never wait: the first 429 is returned as `RateLimited`.
    pub fn fail_fast() -> Self {
        Self {
            max_attempts: 1,
            max_wait: Duration::ZERO,
        }
    }

    /// The wait before retry number `attempt` (1-based) when the registry names none.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let secs = 1u64 << attempt.saturating_sub(1).min(16);
        Duration::from_secs(secs).min(self.max_wait)
    }
}

/// The wait a response asks for, if it names one. `now` is injected for tests.
pub(crate) fn retry_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(v) {
            let at = SystemTime::from(date.with_timezone(&chrono::Utc));
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    for name in ["ratelimit-reset", "x-ratelimit-reset"] {
        if let Some(secs) = get(name).and_then(leading_int) {
            return Some(reset_to_wait(secs, now));
        }
    }
    // draft-ietf-httpapi-ratelimit-headers: `RateLimit: "default";r=0;t=30`.
    if let Some(v) = get("ratelimit") {
        let t = v
            .split([';', ','])
            .filter_map(|p| p.trim().strip_prefix("t="))
            .find_map(leading_int);
        if let Some(secs) = t {
            return Some(Duration::from_secs(secs));
        }
    }
    None
}

/// What is left of the quota, from `RateLimit-Remaining` / `X-RateLimit-Remaining`
/// (Docker Hub sends `76;w=21600`).
pub(crate) fn remaining(headers: &HeaderMap) -> Option<u64> {
    ["ratelimit-remaining", "x-ratelimit-remaining"]
        .iter()
        .find_map(|n| headers.get(*n)?.to_str().ok().and_then(leading_int))
}

fn leading_int(s: &str) -> Option<u64> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// `*-Reset` is seconds from now in the IETF draft, but a Unix time in GitHub-style APIs:
/// values past 2001-09-09 (10⁹) are read as a Unix time.
fn reset_to_wait(value: u64, now: SystemTime) -> Duration {
    if value >= 1_000_000_000 {
        let at = UNIX_EPOCH + Duration::from_secs(value);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        Duration::from_secs(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = at(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            retry_hint(&headers(&[("Retry-After", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_hint(
                &headers(&[("Retry-After", "Wed, 21 Oct 2015 07:28:30 GMT")]),
                now
            ),
            Some(Duration::from_secs(30))
        );
        // A date in the past means now.
        assert_eq!(
            retry_hint(
                &headers(&[("Retry-After", "Wed, 21 Oct 2015 07:00:00 GMT")]),
                now
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_hint(&headers(&[("Retry-After", "soon")]), now), None);
    }

    #[test]
    fn ratelimit_reset_headers() {
        let now = at(1_700_000_000);
        assert_eq!(
            retry_hint(&headers(&[("RateLimit-Reset", "12")]), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            retry_hint(&headers(&[("X-RateLimit-Reset", "1700000045")]), now),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            retry_hint(&headers(&[("RateLimit", "\"default\";r=0;t=9")]), now),
            Some(Duration::from_secs(9))
        );
        assert_eq!(retry_hint(&HeaderMap::new(), now), None);
    }

    #[test]
    fn remaining_reads_docker_hub_form() {
        assert_eq!(
            remaining(&headers(&[("ratelimit-remaining", "76;w=21600")])),
            Some(76)
        );
        assert_eq!(
            remaining(&headers(&[("X-RateLimit-Remaining", "0")])),
            Some(0)
        );
        assert_eq!(remaining(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RateLimitPolicy {
            max_attempts: 10,
            max_wait: Duration::from_secs(5),
        };
        assert_eq!(p.backoff(1), Duration::from_secs(1));
        assert_eq!(p.backoff(2), Duration::from_secs(2));
        assert_eq!(p.backoff(3), Duration::from_secs(4));
        assert_eq!(p.backoff(4), Duration::from_secs(5));
        assert_eq!(p.backoff(60), Duration::from_secs(5));
    }
}
