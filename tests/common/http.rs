//! Tiny HTTP/1.0 GETs of the apps the tests deploy (published on 127.0.0.1).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` from `address` (`127.0.0.1:PORT`): the status and the body.
pub(crate) fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_as(address, address, path)
}

/// `GET path` from `address` with `Host: host` (what a proxy forwarding `host` would send): the
/// status and the body.
pub(crate) fn http_get_as(address: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let addr = address
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// The (trimmed) body of `GET /` at `address`, which must answer 200.
pub(crate) fn body(address: &str) -> String {
    body_as(address, address)
}

/// The (trimmed) body of `GET /` at `address` with `Host: host`, which must answer 200.
pub(crate) fn body_as(address: &str, host: &str) -> String {
    match http_get_as(address, host, "/") {
        Ok((200, body)) => body.trim().to_owned(),
        other => panic!("GET / at {address} (Host: {host}): {other:?}"),
    }
}
