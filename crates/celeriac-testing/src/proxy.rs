//! A TCP proxy a test controls, for network faults: cut every connection and refuse new
//! ones for a while, or cut a connection right after it has forwarded a given command
//! (so the server ran it but the client never hears the reply — the ambiguous failure a
//! retry must not turn into a duplicate).
//!
//! Plain threads, not tokio: the proxy must keep forwarding while a test's runtime is
//! busy or blocked, and a fault must land at a byte position, not at a scheduler's whim.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A proxy on `127.0.0.1:<port>` forwarding to one target; stops on drop.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// While set, accepted connections are closed at once.
    down: AtomicBool,
    /// Set on drop: the accept loop ends.
    stopped: AtomicBool,
    /// Every live connection's two sockets, to cut them.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// Cut the connection that forwards this byte string to the server, once.
    cut_after: Mutex<Option<Vec<u8>>>,
    /// How many connections were cut by `cut_after`.
    cuts: AtomicU64,
}

impl TcpProxy {
    /// Starts a proxy to `target` (`host:port`).
    pub fn start(target: &str) -> std::io::Result<Self> {
        let target: SocketAddr = target
            .parse()
            .map_err(|e| std::io::Error::other(format!("proxy target {target}: {e}")))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if s.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                    s.conns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((c3, s3));
                }
                let up = s.clone();
                let hold = Arc::new(AtomicBool::new(false));
                let down_hold = hold.clone();
                std::thread::spawn(move || pump_up(client, server, &up, &hold));
                std::thread::spawn(move || pump(s2, c2, &down_hold));
            }
        });
        Ok(Self { port, shared })
    }

    /// The proxy's address as `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        self.cut_open();
    }

    /// Cuts every open connection; new ones are accepted.
    pub fn cut_open(&self) {
        let conns =
            std::mem::take(&mut *self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for (c, s) in conns {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Arms a one-shot fault: the next connection that forwards `needle` to the server
    /// (a command such as `EXEC`) forwards it, lets the server answer for 200 ms, and is
    /// then cut before the reply reaches the client.
    pub fn cut_after(&self, needle: &[u8]) {
        *self
            .shared
            .cut_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(needle.to_vec());
    }

    /// How many connections a [`cut_after`](Self::cut_after) fault has cut.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut_open();
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(self.addr());
    }
}

/// Server → client; what arrives once `hold` is set is dropped, and the connection cut.
fn pump(mut from: TcpStream, mut to: TcpStream, hold: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if hold.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Client → server, watching for an armed `cut_after` needle. The last bytes of the
/// previous read are kept, so a needle split across two reads is still seen. When the
/// needle goes by, the replies are held back (`hold`) before it is forwarded, the server
/// gets 200 ms to run it, and the connection is cut.
fn pump_up(mut from: TcpStream, mut to: TcpStream, shared: &Shared, hold: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let needle = shared
            .cut_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut cut = false;
        if let Some(needle) = needle {
            let mut seen = std::mem::take(&mut tail);
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(needle.len()).any(|w| w == needle.as_slice()) {
                let mut armed = shared.cut_after.lock().unwrap_or_else(|p| p.into_inner());
                cut = armed.take().is_some();
            }
            let keep = seen.len().min(needle.len().saturating_sub(1));
            tail = seen[seen.len() - keep..].to_vec();
        }
        if cut {
            hold.store(true, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if cut {
            // Counted before the wait: the client may be through its retry before it ends.
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
