//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! The tests talk to the sidecar the way a kubelet probe or a shell script
//! does: one request per connection, `Connection: close`. Writing the request
//! by hand (`httparse` reads the answer) also lets a test send bytes no
//! well-behaved client would: oversize headers, half-sent requests, odd
//! methods. Every connect, read and write has a timeout, so a hung server
//! fails the test instead of hanging it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Loopback connects are instant unless the accept queue is full, which is
/// exactly what a test about a pile of idle connections must notice.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe answer slower than this breaks "a probe is always answered".
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

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
    let mut stream = connect(addr)?;
    stream.write_all(&raw)?;
    read_response(&mut stream, method == "HEAD")
}

/// Reads one response from `stream`: the head, then a body framed by
/// Content-Length, chunked encoding, or the end of the connection.
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
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut headers);
        let got = |what: &str| format!("{what} (got {:?})", String::from_utf8_lossy(&buf));
        let parsed = head.parse(&buf);
        let parsed =
            parsed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, got(&e.to_string())))?;
        if let httparse::Status::Complete(len) = parsed {
            let headers = head.headers.iter().map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_string(), value)
            });
            let response = Response {
                status: head.code.unwrap_or_default(),
                headers: headers.collect(),
                body: String::new(),
            };
            return Ok((response, buf.split_off(len)));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            let what = "connection closed before a complete response head";
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, got(what)));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Decodes the complete chunks at the start of a chunked body, up to the last
/// (empty) one: their data, and how many bytes of `data` they took.
pub fn dechunk(data: &[u8]) -> (Vec<u8>, usize) {
    let (mut out, mut used) = (Vec::new(), 0);
    while let Ok(httparse::Status::Complete((start, size))) =
        httparse::parse_chunk_size(&data[used..])
    {
        let (start, size) = (used + start, size as usize);
        if size == 0 || data.len() < start + size + 2 {
            break;
        }
        out.extend_from_slice(&data[start..start + size]);
        used = start + size + 2;
    }
    (out, used)
}
