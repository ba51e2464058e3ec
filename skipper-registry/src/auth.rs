//! `WWW-Authenticate` challenges and the token cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secrecy::SecretString;

/// What a registry asked for in its `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="…"`: send the credentials with every request.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parse every `WWW-Authenticate` value; Bearer wins over Basic when both are offered.
    pub(crate) fn from_headers<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut basic = false;
        for value in values {
            let (scheme, params) = match value.trim().split_once(char::is_whitespace) {
                Some((s, p)) => (s, p),
                None => (value.trim(), ""),
            };
            if scheme.eq_ignore_ascii_case("bearer") {
                let params = parse_params(params);
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.clone())
                        .filter(|v| !v.is_empty())
                };
                if let Some(realm) = get("realm") {
                    return Some(Self::Bearer {
                        realm,
                        service: get("service"),
                        scope: get("scope"),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
        basic.then_some(Self::Basic)
    }
}

/// `key=value` or `key="quoted, value"` pairs separated by commas (RFC 9110 auth-params).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        let key = key.trim().to_owned();
        if !key.is_empty() {
            out.push((key, value.trim().to_owned()));
        }
        if chars.peek().is_none() {
            break;
        }
    }
    out
}

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) value: SecretString,
    pub(crate) expires_at: Instant,
}

/// What the client has learnt about a registry's auth, shared by all its requests.
#[derive(Debug, Default)]
pub(crate) struct AuthState {
    /// The registry's challenge, once seen: later requests authenticate up front.
    pub(crate) challenge: Option<Challenge>,
    /// Bearer tokens by scope (`repository:team/app:pull`, or `""` for the `/v2/` ping).
    pub(crate) tokens: HashMap<String, Token>,
}

impl AuthState {
    /// An unexpired token for `scope`.
    pub(crate) fn token(&self, scope: &str, now: Instant) -> Option<SecretString> {
        self.tokens
            .get(scope)
            .filter(|t| t.expires_at > now)
            .map(|t| t.value.clone())
    }
}

/// How long to trust a token: `expires_in` less a margin for clock skew and request latency,
/// never less than zero. Registries that omit `expires_in` mean 60 seconds (the spec's minimum).
pub(crate) fn token_lifetime(expires_in: Option<u64>) -> Duration {
    let secs = expires_in.filter(|s| *s > 0).unwrap_or(60);
    let margin = (secs / 10).clamp(1, 30);
    Duration::from_secs(secs.saturating_sub(margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::from_headers([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
    }

    #[test]
    fn quoted_commas_and_unquoted_values() {
        let c = Challenge::from_headers([
            r#"bearer realm=https://r.example/token, scope="repository:a/b:pull,push", error="insufficient_scope""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://r.example/token".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_and_preference() {
        assert_eq!(
            Challenge::from_headers([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::from_headers([
                r#"Basic realm="x""#,
                r#"Bearer realm="https://t.example/token""#
            ]),
            Some(Challenge::Bearer {
                realm: "https://t.example/token".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(Challenge::from_headers(["Bearer service=\"x\""]), None);
        assert_eq!(Challenge::from_headers(["Negotiate"]), None);
        assert_eq!(Challenge::from_headers([""]), None);
    }

    #[test]
    fn token_lifetime_has_a_margin() {
        assert_eq!(token_lifetime(None), Duration::from_secs(54));
        assert_eq!(token_lifetime(Some(300)), Duration::from_secs(270));
        assert_eq!(token_lifetime(Some(3600)), Duration::from_secs(3570));
        assert_eq!(token_lifetime(Some(1)), Duration::ZERO);
    }
}
