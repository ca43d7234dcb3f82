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
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "AMI i/o error: {e}"),
            Error::Injection { key } => write!(
                f,
                "refusing to send AMI action: value of {key:?} contains CR or LF"
            ),
            Error::AuthFailed(msg) => write!(
                f,
                "AMI login failed: {msg} (check [asterisk] username/secret and manager.conf permit=)"
            ),
            Error::Protocol(msg) => write!(f, "AMI protocol error: {msg}"),
            Error::Timeout(what) => write!(f, "AMI timeout: {what}"),
            Error::NotConnected => write!(f, "AMI is not connected"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
