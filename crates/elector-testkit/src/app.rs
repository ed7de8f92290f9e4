//! A tiny HTTP application on loopback whose health a test switches, to stand beside a
//! replica started with `--app-health`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A tiny application beside a replica: `GET /ready` answers 200 while healthy, 503 else.
pub struct App {
    port: u16,
    healthy: Arc<AtomicBool>,
}

impl App {
    /// Starts serving on a free loopback port, healthy or not.
    pub fn start(healthy: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test app");
        let port = listener.local_addr().expect("its address").port();
        let flag = Arc::new(AtomicBool::new(healthy));
        let serving = flag.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let status = if serving.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        App {
            port,
            healthy: flag,
        }
    }

    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Its health URL, for `--app-health`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ready", self.port)
    }
}
