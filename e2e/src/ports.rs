//! Free loopback TCP ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and reading the port the kernel chose; the
/// listener is closed again before returning. A process-wide set guarantees the same port is
/// never handed out twice by this process, but another process may still grab it before it is
/// used, so callers starting servers should treat "address already in use" as retryable.
///
/// # Panics
///
/// Panics if no socket can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    let mut ports = handed_out().lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("reading the local address of a bound listener")
            .port();
        if ports.insert(port) {
            return port;
        }
    }
}

/// Whether something accepts TCP connections on `127.0.0.1:port` right now.
pub(crate) fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200)).is_ok()
}
