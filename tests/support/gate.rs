//! A TCP forwarder on 127.0.0.1 that can refuse connections: put it in front of the fake portal
//! to get a portal that is unreachable (connection refused, as when nothing listens) and comes
//! back on the same address, without losing the portal's state.
//!
//! Closed, the listening socket is really closed, so a connect gets `ECONNREFUSED`, and every
//! connection in flight is cut. Opened again, the same port is bound again (std sets
//! `SO_REUSEADDR`). The forwarder stops, and cuts what it forwards, when dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub struct Gate {
    addr: SocketAddr,
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    open: AtomicBool,
    stop: AtomicBool,
    target: SocketAddr,
    /// Both ends of every forwarded connection, to cut them when the gate closes.
    conns: Mutex<Vec<TcpStream>>,
    /// Connections refused or cut so far (a test can check the fault really happened).
    refused: Mutex<usize>,
}

impl Gate {
    /// Forward 127.0.0.1:(new port) to `target`, open (`true`) or refusing (`false`).
    pub fn start(target: SocketAddr, open: bool) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gate");
        let addr = listener.local_addr().expect("gate address");
        let inner = Arc::new(Inner {
            open: AtomicBool::new(open),
            stop: AtomicBool::new(false),
            target,
            conns: Mutex::new(Vec::new()),
            refused: Mutex::new(0),
        });
        let run = Arc::clone(&inner);
        let thread = thread::Builder::new()
            .name("gate".into())
            .spawn(move || run.accept_loop(addr, listener))
            .expect("spawn gate");
        Gate {
            addr,
            inner,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Open: forward new connections. Closed: refuse them and cut the ones in flight.
    pub fn set_open(&self, open: bool) {
        self.inner.open.store(open, Ordering::SeqCst);
        if !open {
            self.inner.cut_all();
        }
    }

    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.inner.cut_all();
    }
}

impl Inner {
    fn cut_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Polls (non-blocking accept every few ms) so that closing and reopening, which swap the
    /// listener, need no wake-up trick.
    fn accept_loop(self: Arc<Self>, addr: SocketAddr, first: TcpListener) {
        let mut listener = Some(first);
        while !self.stop.load(Ordering::SeqCst) {
            let open = self.open.load(Ordering::SeqCst);
            match (&listener, open) {
                (Some(_), false) => listener = None, // closes the port: ECONNREFUSED from now on
                (None, true) => listener = rebind(addr),
                _ => {}
            }
            let Some(l) = &listener else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = l.set_nonblocking(true);
            match l.accept() {
                Ok((client, _)) => self.forward(client),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2))
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    fn forward(&self, client: TcpStream) {
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(self.target) else {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            return;
        };
        let pairs = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(c_read), Ok(s_write), Ok(c_write), Ok(s_read)) = pairs else {
            return;
        };
        {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            // Forget connections that already ended, so the list stays as long as what is open.
            conns.retain(|c| c.peer_addr().is_ok());
            conns.push(client);
            conns.push(server);
        }
        thread::spawn(move || pipe(c_read, s_write));
        thread::spawn(move || pipe(s_read, c_write));
    }
}

fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    // Someone else may hold the port for a moment (an outgoing connection's ephemeral port).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Some(l),
            Err(e) if Instant::now() >= deadline => panic!("gate cannot rebind {addr}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copy one direction until either side ends, then end both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
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
    let _ = from.shutdown(Shutdown::Read);
}
