//! A TCP forwarder a test can switch off: for a process that must lose one
//! peer (its etcd, say) while everything else it talks to stays reachable.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Shared {
    blocked: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every open forwarded connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn cut_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Forwards connections on [`TcpProxy::addr`] to a target until
/// [`TcpProxy::block`]; stops on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl TcpProxy {
    /// Listens on `listen` (a free port) and forwards each connection to
    /// `target`.
    pub fn start(listen: IpAddr, target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind((listen, 0))
            .unwrap_or_else(|e| panic!("bind a proxy on {listen}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy address: {e}"));
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if s.blocked.load(Ordering::SeqCst) {
                    // Refused at once: closed before a byte goes through.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                s.open
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend([c3, s3]);
                std::thread::spawn(move || pump(client, server));
                std::thread::spawn(move || pump(s2, c2));
            }
        });
        TcpProxy { addr, shared }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection and refuses new ones until
    /// [`TcpProxy::unblock`].
    pub fn block(&self) {
        self.shared.blocked.store(true, Ordering::SeqCst);
        self.shared.cut_all();
    }

    pub fn unblock(&self) {
        self.shared.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wakes the accept loop so its thread ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind echo");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(w) = c.try_clone() else { return };
                    pump(c, w);
                });
            }
        });
        addr
    }

    fn roundtrip(addr: SocketAddr) -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[test]
    fn forwards_until_blocked_and_again_once_unblocked() {
        let proxy = TcpProxy::start(IpAddr::V4(Ipv4Addr::LOCALHOST), echo_server());
        assert_eq!(roundtrip(proxy.addr()).expect("through the proxy"), "ping");
        // An open connection is cut by the block.
        let mut open = TcpStream::connect(proxy.addr()).expect("connect");
        open.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        open.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).expect("echo");
        proxy.block();
        let mut rest = Vec::new();
        let cut = open.read_to_end(&mut rest);
        assert!(
            cut.is_err() || rest.is_empty(),
            "the open connection was not cut: {cut:?} {rest:?}"
        );
        assert!(roundtrip(proxy.addr()).is_err(), "forwarded while blocked");
        proxy.unblock();
        assert_eq!(roundtrip(proxy.addr()).expect("unblocked"), "ping");
    }
}
