use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};
use std::time::Instant;

/// Fails with `TimedOut` once `deadline` has passed, so that a client sending a body one byte
/// at a time cannot hold the thread reading it for ever (`Limits::request_timeout`).
/// Checked after each read: a silent client is caught by the socket's read timeout instead.
pub struct DeadlineReader<R> {
    inner: R,
    deadline: Option<Instant>,
}

impl<R> DeadlineReader<R> {
    pub fn new(inner: R, deadline: Option<Instant>) -> DeadlineReader<R> {
        DeadlineReader { inner, deadline }
    }
}

impl<R: Read> Read for DeadlineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.deadline.map_or(false, |d| Instant::now() > d) {
            return Err(IoError::new(
                ErrorKind::TimedOut,
                "request body not received in time",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod test {
    use super::DeadlineReader;
    use std::io::{ErrorKind, Read};
    use std::time::{Duration, Instant};

    #[test]
    fn reads_until_the_deadline() {
        let mut ok =
            DeadlineReader::new(&b"abc"[..], Some(Instant::now() + Duration::from_secs(60)));
        let mut s = String::new();
        ok.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");

        let past = Instant::now() - Duration::from_millis(1);
        let mut late = DeadlineReader::new(&b"abc"[..], Some(past));
        assert_eq!(
            late.read(&mut [0; 3]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        let mut none = DeadlineReader::new(&b"abc"[..], None);
        assert_eq!(none.read(&mut [0; 3]).unwrap(), 3);
    }
}
