//! A tiny blocking HTTP/1.1 client, enough for the sidecar's probes and etcd's `/metrics`.
//!
//! Written by hand rather than pulling in a client crate: the bench needs exactly two things,
//! a request on a kept-alive connection (the load generator) and a request on a fresh one (a
//! kubelet probe opens a new connection each time), and it must know precisely what it sent
//! and when. The sidecar always frames its bodies with `Content-Length`; for anything else
//! (etcd's `/metrics` may be chunked) [`get_to_eof`] sends HTTP/1.0 and reads to the end.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One kept-alive connection.
pub struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Conn {
    /// Connect to `addr`, ready to send `GET path` repeatedly.
    pub fn connect(addr: SocketAddr, path: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            request: format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send the request once and read the whole response.
    pub fn get(&mut self) -> io::Result<Response> {
        self.stream.write_all(&self.request)?;
        read_response(&mut self.stream, &mut self.buf)
    }
}

/// `GET path` on a new connection with `Connection: close`, as a kubelet probe does.
pub fn get_once(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    read_response(&mut stream, &mut buf)
}

/// `GET path` as HTTP/1.0, body read to the end of the connection.
pub fn get_to_eof(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    let end = find(&all, b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let status = status_of(&all[..end])?;
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&all[end + 4..]).into_owned(),
    })
}

fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Response> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the headers",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = &buf[..head_end];
    let status = status_of(head)?;
    let len = content_length(head).ok_or_else(|| bad("no Content-Length"))?;
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed inside the body",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
    })
}

fn status_of(head: &[u8]) -> io::Result<u16> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let text = std::str::from_utf8(line).map_err(|_| bad("status line not UTF-8"))?;
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}
