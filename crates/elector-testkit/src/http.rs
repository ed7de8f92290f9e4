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
    let mut stream = connect(addr)?;
    stream.write_all(raw)?;
    read_response(&mut stream, raw.starts_with(b"HEAD "))
}

/// A connection to `addr` with the timeouts above.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One kept-alive connection that sends the same `GET path` again and again
/// (the bench's load generator).
pub struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, path: &str) -> io::Result<Conn> {
        let stream = connect(addr)?;
        stream.set_nodelay(true)?;
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
    let (mut response, mut body) = read_head(stream)?;
    let status = response.status;
    let mut chunk = [0u8; 8192];
    let mut read_more = |body: &mut Vec<u8>| -> io::Result<bool> {
        let n = stream.read(&mut chunk)?;
        body.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    if no_body {
        body.clear();
    } else if let Some(len) = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while body.len() < len && read_more(&mut body)? {}
        body.truncate(len);
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        while !body.ends_with(b"0\r\n\r\n") && read_more(&mut body)? {}
        body = dechunk(&body).0;
    } else {
        stream.read_to_end(&mut body)?;
    }
    response.body = String::from_utf8_lossy(&body).into_owned();
    Ok(response)
}

/// Reads a response head from `stream`: the response with an empty body, and
/// the bytes that came after the head.
pub fn read_head(stream: &mut TcpStream) -> io::Result<(Response, Vec<u8>)> {
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
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let response = Response {
        status,
        headers,
        body: String::new(),
    };
    Ok((response, buf.split_off(header_end)))
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes the complete chunks at the start of a chunked body, up to the last
/// (empty) one: their data, and how many bytes of `data` they took.
pub fn dechunk(data: &[u8]) -> (Vec<u8>, usize) {
    let (mut out, mut used) = (Vec::new(), 0);
    while let Some(line_end) = find(&data[used..], b"\r\n") {
        let size_field = String::from_utf8_lossy(&data[used..used + line_end]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        let start = used + line_end + 2;
        if size == 0 || data.len() < start + size + 2 {
            break;
        }
        out.extend_from_slice(&data[start..start + size]);
        used = start + size + 2;
    }
    (out, used)
}
