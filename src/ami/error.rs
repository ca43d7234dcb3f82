use std::fmt;
use std::io;

/// Everything that can go wrong on the AMI side of the daemon.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (connect, read or write).
    Io(io::Error),
    /// An action field contained CR or LF. Nothing was written: this is the guard
    /// against AMI header injection.
    Injection { key: String },
    /// Asterisk refused our Login (wrong username or secret, or an ACL).
    AuthFailed(String),
    /// The peer did not speak AMI (no banner, or garbage where a response was expected).
    Protocol(String),
    /// No answer to an action (or no data at all) within the allowed time.
    Timeout(&'static str),
    /// The connection is down; the action was not sent.
    NotConnected,
    /// The TCP connection to Asterisk could not be opened (name lookup, refusal, timeout).
    /// Kept apart from `Io` so the log says *where* we tried to connect.
    Connect { addr: String, source: io::Error },
    /// Asterisk answered `Response: Error` to an action that was supposed to start an event list
    /// (so no list will follow). Carries Asterisk's `Message:` text.
    Rejected(String),
    /// A caller supplied an ActionID that another request is still waiting on; the answer could
    /// not be told apart, so the action was not sent.
    ActionIdInUse(String),
    /// Asterisk announced `Event: Shutdown` (restart or stop); it closes the session right after.
    AsteriskShutdown(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "AMI i/o error: {e}"),
            Error::Injection { key } => write!(
                f,
                "refusing to send AMI action: field {key:?} contains CR or LF (or its key a colon)"
            ),
            Error::AuthFailed(msg) => write!(
                f,
                "AMI login failed: {msg} (check [asterisk] username/secret and manager.conf permit=)"
            ),
            Error::Protocol(msg) => write!(f, "AMI protocol error: {msg}"),
            Error::Timeout(what) => write!(f, "AMI timeout: {what}"),
            Error::NotConnected => write!(f, "AMI is not connected"),
            Error::Connect { addr, source } => {
                write!(f, "cannot connect to AMI at {addr}: {source}")
            }
            Error::Rejected(msg) => write!(f, "Asterisk rejected the action: {msg}"),
            Error::ActionIdInUse(id) => write!(
                f,
                "ActionID {id:?} is already used by a request that is still waiting"
            ),
            Error::AsteriskShutdown(what) => write!(f, "Asterisk is shutting down ({what})"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
