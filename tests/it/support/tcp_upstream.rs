//! `TcpUpstream`: a plaintext byte-level upstream on `127.0.0.1:0` or a Unix socket, stopped
//! on Drop, counting its connections. It echoes bytes until EOF and then shuts down its write
//! side, or (`TcpMode::ReplyAfterEof`) answers only once it has seen EOF, which proves a
//! client's half-close travelled all the way through the proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// What a `TcpUpstream` does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// Echo bytes as they come; on EOF, shut down the write side.
    Echo,
    /// Read until EOF, then write `got N bytes sha256 HEX\n` and shut down the write side.
    ReplyAfterEof,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A plaintext byte-level upstream. See the module docs.
pub struct TcpUpstream {
    target: String,
    wake: Wake,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<Conn>>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
enum Wake {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TcpUpstream {
    /// Listen on `127.0.0.1:0`.
    pub fn start(mode: TcpMode) -> TcpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp upstream");
        let addr = listener.local_addr().expect("upstream address");
        Self::spawn(
            Listener::Tcp(listener),
            addr.to_string(),
            Wake::Tcp(addr),
            mode,
        )
    }

    /// Listen on the Unix socket `path` (removed on Drop); `target()` is `unix:PATH`.
    pub fn start_unix(path: &Path, mode: TcpMode) -> TcpUpstream {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind unix upstream {}: {e}", path.display()));
        Self::spawn(
            Listener::Unix(listener, path.to_path_buf()),
            format!("unix:{}", path.display()),
            Wake::Unix(path.to_path_buf()),
            mode,
        )
    }

    fn spawn(listener: Listener, target: String, wake: Wake, mode: TcpMode) -> TcpUpstream {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (t_stop, t_connections, t_open) = (stop.clone(), connections.clone(), open.clone());
        let thread = std::thread::Builder::new()
            .name("tcp-upstream".into())
            .spawn(move || loop {
                let conn = match &listener {
                    Listener::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
                    Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
                };
                if t_stop.load(Ordering::SeqCst) {
                    if let Listener::Unix(_, path) = &listener {
                        let _ = std::fs::remove_file(path);
                    }
                    return;
                }
                let Ok(conn) = conn else { continue };
                t_connections.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = conn.try_clone() {
                    t_open.lock().unwrap_or_else(|e| e.into_inner()).push(clone);
                }
                std::thread::spawn(move || serve_bytes(conn, mode));
            })
            .expect("spawn tcp upstream thread");
        TcpUpstream {
            target,
            wake,
            stop,
            connections,
            open,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT` or `unix:/path`, for `--target`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve_bytes(mut conn: Conn, mode: TcpMode) {
    let mut buf = [0u8; 16 * 1024];
    let mut hasher = Sha256::new();
    let mut total = 0usize;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match mode {
                TcpMode::Echo => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                TcpMode::ReplyAfterEof => {
                    hasher.update(&buf[..n]);
                    total += n;
                }
            },
            Err(_) => return,
        }
    }
    if mode == TcpMode::ReplyAfterEof {
        let reply = format!(
            "got {total} bytes sha256 {}\n",
            hex::encode(hasher.finalize())
        );
        let _ = conn.write_all(reply.as_bytes());
    }
    conn.shutdown(Shutdown::Write);
}

/// The reply `TcpMode::ReplyAfterEof` gives for `data`.
pub fn reply_after_eof_for(data: &[u8]) -> String {
    format!(
        "got {} bytes sha256 {}\n",
        data.len(),
        hex::encode(Sha256::digest(data))
    )
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        match &self.wake {
            Wake::Tcp(addr) => {
                let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
            }
            Wake::Unix(path) => {
                let _ = UnixStream::connect(path);
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for conn in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            conn.shutdown(Shutdown::Both);
        }
    }
}
