//! sd_notify by hand: systemd's readiness and watchdog protocol is one datagram per message on
//! the Unix socket named in `$NOTIFY_SOCKET`, so std's `UnixDatagram` is all it takes (the
//! design allows no libsystemd binding and no extra crate).
//!
//! The protocol (sd_notify(3)): each datagram holds newline-separated `KEY=VALUE` assignments,
//! e.g. `READY=1\nSTATUS=...`. `$NOTIFY_SOCKET` is a filesystem path (`/run/systemd/notify`)
//! or, when it starts with `@`, a Linux abstract socket name. systemd silently ignores a
//! datagram it cannot attribute to the service (`NotifyAccess=main` accepts only the main
//! PID), so a lost notification shows up as a start timeout, never as an error here.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Send `state` (one or more `KEY=VALUE` lines) to the service manager on `socket`, the value
/// of `$NOTIFY_SOCKET`. The caller reads the variable once
/// ([`Supervisor`](crate::supervisor::Supervisor) does, at start), so tests need not touch the
/// process environment (which every test thread shares).
///
/// Returns `Ok(false)` when the socket is unset or empty: not running under systemd
/// (a terminal, a test, another init), which is normal and not an error.
pub fn notify_socket(socket: Option<&OsStr>, state: &str) -> io::Result<bool> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let addr = socket_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        // A datagram is all or nothing; a short count would mean a truncated message.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("notify: sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(true)
}

fn socket_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket),
        Some(b'@') => abstract_addr(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            // systemd also knows `vsock:` (for VMs); a service on EL9 never gets one.
            format!("NOTIFY_SOCKET={socket:?} is neither a path nor an @abstract name"),
        )),
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract Unix sockets exist only on Linux",
    ))
}

/// The watchdog timeout systemd expects us to beat (`WatchdogSec=`), or `None` when the
/// watchdog is off. Send `WATCHDOG=1` at about half of it.
///
/// `$WATCHDOG_PID`, when set, names the process the watchdog is meant for: a child that
/// inherited the environment must not think the parent's watchdog is its own.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on explicit values, for tests.
pub fn watchdog_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("callme-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn path_socket_gets_the_datagram() {
        let dir = temp_dir("path");
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let sent = notify_socket(Some(path.as_os_str()), "READY=1\nSTATUS=ok").unwrap();
        assert!(sent);
        assert_eq!(recv(&sock), "READY=1\nSTATUS=ok");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_gets_the_datagram() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("callme-notify-test-{}", std::process::id());
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let env = format!("@{name}");
        assert!(notify_socket(Some(OsStr::new(&env)), "WATCHDOG=1").unwrap());
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn unset_or_empty_socket_is_not_an_error() {
        assert!(!notify_socket(None, "READY=1").unwrap());
        assert!(!notify_socket(Some(OsStr::new("")), "READY=1").unwrap());
        assert!(notify_socket(Some(OsStr::new("relative/path")), "READY=1").is_err());
    }

    #[test]
    fn watchdog_honours_pid_and_zero() {
        let half_s = Some(Duration::from_millis(500));
        assert_eq!(watchdog_from(Some("500000"), None, 42), half_s);
        assert_eq!(watchdog_from(Some("500000"), Some("42"), 42), half_s);
        assert_eq!(watchdog_from(Some("500000"), Some("43"), 42), None);
        assert_eq!(watchdog_from(Some("500000"), Some("junk"), 42), None);
        assert_eq!(watchdog_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_from(Some("x"), None, 42), None);
        assert_eq!(watchdog_from(None, Some("42"), 42), None);
    }
}
