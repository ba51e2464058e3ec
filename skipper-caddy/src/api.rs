//! The shapes Skipper writes into (and reads from) Caddy's JSON config: one route per domain,
//! with `@id`s Skipper owns.

use serde_json::{Value, json};
use skipper_core::{Route, RouteOptions, Upstream};

/// The `@id` prefix of the routes Skipper creates: `skipper-route-<domain>`. A route whose `@id`
/// does not start with it is not Skipper's and is never changed or removed (unless adopted).
pub const ROUTE_ID_PREFIX: &str = "skipper-route-";
/// The `@id` prefix of the `reverse_proxy` handler in each of Skipper's routes:
/// `skipper-proxy-<domain>`, so a switch is one `PATCH /id/skipper-proxy-<domain>/upstreams`.
pub const PROXY_ID_PREFIX: &str = "skipper-proxy-";

/// The `@id` of Skipper's route for `domain`. The domain is kept as it is (lower-cased): a DNS
/// name is URL-path safe, and unlike "dots as dashes" two domains never share an id.
pub fn route_id(domain: &str) -> String {
    format!("{ROUTE_ID_PREFIX}{}", domain.to_ascii_lowercase())
}

/// The `@id` of the `reverse_proxy` handler of Skipper's route for `domain`.
pub fn proxy_id(domain: &str) -> String {
    format!("{PROXY_ID_PREFIX}{}", domain.to_ascii_lowercase())
}

/// What is wrong with `route` for Caddy, if anything.
pub(crate) fn route_problem(route: &Route) -> Option<String> {
    let d = &route.domain;
    if d.is_empty() {
        return Some("the domain is empty".into());
    }
    if !d
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Some("a domain has only letters, digits, '.', '-' and '_'".into());
    }
    if !matches!(route.upstream.scheme.as_str(), "http" | "https") {
        return Some(format!(
            "the upstream scheme must be http or https, not {:?}",
            route.upstream.scheme
        ));
    }
    if route.upstream.port == 0 {
        return Some("the upstream port is 0".into());
    }
    if route.upstream.host.is_empty() {
        return Some("the upstream host is empty".into());
    }
    None
}

/// `reverse_proxy`'s `upstreams` for `upstream`: `[{"dial": "host:port"}]`.
pub(crate) fn upstreams(upstream: &Upstream) -> Value {
    let host = &upstream.host;
    let dial = if host.contains(':') {
        format!("[{host}]:{}", upstream.port)
    } else {
        format!("{host}:{}", upstream.port)
    };
    json!([{ "dial": dial }])
}

/// The handler that goes before the proxy in each of Skipper's routes: while the server that
/// answers is shutting down (`{http.shutting_down}`: during the HTTP app's `shutdown_delay`,
/// after a config change replaced it), the answer says `Connection: close`.
///
/// Why: every change of Caddy's config starts new servers and shuts the old ones down (Go's
/// `http.Server.Shutdown`), which closes each kept-alive connection at once, also one whose
/// client is sending its next request at that moment: that request is lost (Go's own words:
/// "such is life with HTTP/1.1"). With this handler, the old server first tells every client it
/// answers during the delay to close, so the client opens a new connection for its next
/// request (to the new server) and nothing is in flight when the old server closes. Caddy 2.6
/// (Debian bookworm's) applies `shutdown_delay` on every config change; Caddy 2.7 and later
/// only when a listener really closes (on exit), so there it helps only at exit.
pub(crate) fn close_while_shutting_down() -> Value {
    json!({
        "handler": "subroute",
        "routes": [{
            "match": [{ "vars": { "{http.shutting_down}": ["true"] } }],
            "handle": [{ "handler": "headers", "response": { "set": { "Connection": ["close"] } } }],
        }],
    })
}

/// The route Skipper wants for `route`: a host matcher, [`close_while_shutting_down`], one
/// `reverse_proxy` handler with an `@id` of its own, terminal. Websockets need nothing (Caddy
/// proxies upgrades as they come); the NPM-only options (certificates by id, access lists,
/// `advanced_config`) do not apply.
pub(crate) fn desired_route(route: &Route) -> Value {
    let domain = route.domain.to_ascii_lowercase();
    let mut handler = json!({
        "@id": proxy_id(&domain),
        "handler": "reverse_proxy",
        "upstreams": upstreams(&route.upstream),
    });
    if route.upstream.scheme == "https" {
        handler["transport"] = json!({ "protocol": "http", "tls": {} });
    }
    json!({
        "@id": route_id(&domain),
        "match": [{ "host": [domain] }],
        "handle": [close_while_shutting_down(), handler],
        "terminal": true,
    })
}

/// The route's `@id`, if it has one.
pub(crate) fn id_of(route: &Value) -> Option<&str> {
    route.get("@id").and_then(Value::as_str)
}

/// Whether Skipper created `route` (its `@id` has Skipper's prefix).
pub(crate) fn is_skippers(route: &Value) -> bool {
    id_of(route).is_some_and(|id| id.starts_with(ROUTE_ID_PREFIX))
}

/// Every host name in the route's top-level matchers.
fn hosts(route: &Value) -> impl Iterator<Item = &str> {
    route
        .get("match")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|set| set.get("host").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether `route` matches requests for `domain` by its top-level host matchers.
pub(crate) fn serves(route: &Value, domain: &str) -> bool {
    hosts(route).any(|h| h.eq_ignore_ascii_case(domain))
}

/// Whether `route`'s only matcher is `host: [domain]`: adopting it takes nothing else.
pub(crate) fn serves_only(route: &Value, domain: &str) -> bool {
    match route
        .get("match")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([set]) => {
            set.as_object().is_some_and(|m| m.len() == 1)
                && hosts(route).all(|h| h.eq_ignore_ascii_case(domain))
                && hosts(route).next().is_some()
        }
        _ => false,
    }
}

/// The `upstreams` of the proxy handler of Skipper's route for `domain`, if it has one.
pub(crate) fn proxy_upstreams<'a>(route: &'a Value, domain: &str) -> Option<&'a Value> {
    let want = proxy_id(domain);
    route
        .get("handle")?
        .as_array()?
        .iter()
        .find(|h| id_of(h) == Some(want.as_str()))?
        .get("upstreams")
}

/// `route` with its proxy handler's upstreams replaced by `upstreams`, if it has that handler.
pub(crate) fn with_upstreams(route: &Value, domain: &str, upstreams: &Value) -> Option<Value> {
    let mut route = route.clone();
    let want = proxy_id(domain);
    let handler = route
        .get_mut("handle")?
        .as_array_mut()?
        .iter_mut()
        .find(|h| id_of(h) == Some(want.as_str()))?;
    handler["upstreams"] = upstreams.clone();
    Some(route)
}

/// One of Skipper's routes, read back as a [`Route`].
pub(crate) fn parse_route(route: &Value) -> Option<Route> {
    let domain = id_of(route)?.strip_prefix(ROUTE_ID_PREFIX)?.to_owned();
    let want = proxy_id(&domain);
    let handler = route
        .get("handle")?
        .as_array()?
        .iter()
        .find(|h| id_of(h) == Some(want.as_str()))?;
    let dial = handler
        .get("upstreams")?
        .as_array()?
        .first()?
        .get("dial")?
        .as_str()?;
    let (host, port) = dial.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let scheme = if handler.pointer("/transport/tls").is_some() {
        "https"
    } else {
        "http"
    };
    Some(Route {
        domain,
        upstream: Upstream {
            scheme: scheme.into(),
            host: host.to_owned(),
            port: port.parse().ok()?,
        },
        options: RouteOptions::default(),
    })
}

/// The `ETag` Caddy gives a `GET` of `path` answering `body`, `"<path> <hash>"`. Caddy 2.7 and
/// later send it as a header; 2.6 (Debian bookworm's) sends it as an HTTP trailer, which the
/// HTTP client does not expose, so it is computed the way Caddy does: FNV-1a (32 bit) of the
/// body exactly as sent.
pub(crate) fn etag(path: &str, body: &[u8]) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in body {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("\"{path} {hash:08x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, scheme: &str, host: &str, port: u16) -> Route {
        Route {
            domain: domain.into(),
            upstream: Upstream {
                scheme: scheme.into(),
                host: host.into(),
                port,
            },
            options: RouteOptions::default(),
        }
    }

    #[test]
    fn the_etag_is_caddys() {
        // Read from Caddy 2.6.2: GET /config/ of `{"admin":{"listen":"127.0.0.1:25019"}}`.
        assert_eq!(
            etag(
                "/config/",
                b"{\"admin\":{\"listen\":\"127.0.0.1:25019\"}}\n"
            ),
            "\"/config/ e6e2b77b\""
        );
    }

    #[test]
    fn a_desired_route_reads_back_to_itself() {
        for r in [
            route("app.example.com", "http", "web-3f2a", 8080),
            route("a.localhost", "https", "127.0.0.1", 32768),
            route("v6.localhost", "http", "::1", 80),
        ] {
            let v = desired_route(&r);
            assert!(is_skippers(&v));
            assert!(serves(&v, &r.domain) && serves_only(&v, &r.domain));
            assert_eq!(parse_route(&v), Some(r));
        }
    }

    #[test]
    fn routes_made_by_hand_are_recognised() {
        let hand = json!({"match": [{"host": ["a.localhost", "b.localhost"]}], "handle": []});
        assert!(!is_skippers(&hand));
        assert!(serves(&hand, "A.localhost"));
        assert!(!serves_only(&hand, "a.localhost"));
        let with_path = json!({"match": [{"host": ["a.localhost"], "path": ["/x"]}]});
        assert!(serves(&with_path, "a.localhost") && !serves_only(&with_path, "a.localhost"));
        let alone = json!({"match": [{"host": ["a.localhost"]}]});
        assert!(serves_only(&alone, "a.localhost"));
        assert!(!serves(&json!({"handle": []}), "a.localhost"));
    }

    #[test]
    fn only_the_upstreams_change_in_a_switch() {
        let a = desired_route(&route("a.localhost", "http", "127.0.0.1", 1));
        let b = desired_route(&route("a.localhost", "http", "127.0.0.1", 2));
        let ups = proxy_upstreams(&b, "a.localhost").unwrap();
        assert_eq!(ups, &json!([{ "dial": "127.0.0.1:2" }]));
        let switched = with_upstreams(&a, "a.localhost", ups).unwrap();
        assert_eq!(switched, b);
    }

    #[test]
    fn bad_routes_are_refused() {
        assert!(route_problem(&route("a b", "http", "h", 1)).is_some());
        assert!(route_problem(&route("a/b", "http", "h", 1)).is_some());
        assert!(route_problem(&route("a", "ftp", "h", 1)).is_some());
        assert!(route_problem(&route("a", "http", "h", 0)).is_some());
        assert!(route_problem(&route("a", "http", "h", 1)).is_none());
    }
}
