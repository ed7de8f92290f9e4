//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! The tests talk to the sidecar the way a kubelet probe or a shell script
//! does: one request per connection, `Connection: close`. Doing it by hand
//! (instead of pulling in an HTTP client crate) also lets a test send bytes no
//! well-behaved client would: oversize headers, half-sent requests, odd
//! methods. It must never block for ever: every connect, read and write has a
//! timeout, so a hung server fails the test instead of hanging it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect timeout: loopback connects are instant unless the accept queue is
/// full, which is exactly what a test about a pile of idle connections must
/// notice, so keep it bounded but generous.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read/write timeout for one request; a probe answer that takes longer than
/// this is a failure of the contract ("a probe is always answered").
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body (status {}), got {:?}: {e}",
                self.status, self.body
            )
        })
    }
}

/// Sends `raw` as is to `addr` and reads one response.
pub fn request(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let head_request = raw.starts_with(b"HEAD ");
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(raw)?;
    read_response(&mut stream, head_request)
}

/// One kept-alive connection that sends the same `GET path` again and again
/// (the bench's load generator).
pub struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, path: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
        Ok(Conn { stream, request })
    }

    /// Sends the request once and reads the whole response.
    pub fn get(&mut self) -> io::Result<Response> {
        self.stream.write_all(&self.request)?;
        read_response(&mut self.stream, false)
    }
}

/// `GET path` with `Connection: close`, as a kubelet probe does.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    simple(addr, "GET", path, b"")
}

/// `METHOD path` with `Connection: close` and an optional body.
pub fn simple(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    request(addr, &raw)
}

/// Reads one response from `stream`: status line, headers, then a body framed
/// by Content-Length, chunked encoding, or the end of the connection.
pub fn read_response(stream: &mut TcpStream, head_request: bool) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a complete response head (got {:?})",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };

    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };

    let mut body = buf[header_end..].to_vec();
    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    if no_body {
        body.clear();
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else {
        stream.read_to_end(&mut body)?;
    }

    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size_field = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}
