//! The one error type of loading a config: what went wrong, and where (`FILE:LINE`).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why the config could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    Io { path: PathBuf, source: io::Error },
    /// The text is not valid INI (a line that is neither section, key = value, comment nor blank;
    /// a key before any section; a duplicate key or section).
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    /// Valid INI, but not a valid callme config (unknown name, wrong type, missing key).
    /// `line` is 0 when the problem is a missing section.
    Invalid {
        file: String,
        line: usize,
        msg: String,
    },
    /// Several of the above, in line order; `Display` prints one per line.
    Multiple(Vec<Error>),
}

impl Error {
    pub(super) fn from_list(mut errors: Vec<Error>) -> Error {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            Error::Multiple(errors)
        }
    }

    /// The individual problems (one element unless this is [`Error::Multiple`]).
    pub fn problems(&self) -> Vec<&Error> {
        match self {
            Error::Multiple(v) => v.iter().flat_map(Error::problems).collect(),
            e => vec![e],
        }
    }

    /// Line the (first) problem points at; `None` for I/O errors, `Some(0)` for a missing section.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Io { .. } => None,
            Error::Syntax { line, .. } | Error::Invalid { line, .. } => Some(*line),
            Error::Multiple(v) => v.first().and_then(Error::line),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound => {
                        " (create it from callme.conf.example, or pass -c FILE)"
                    }
                    io::ErrorKind::PermissionDenied => {
                        " (the callme user must be able to read it: owner root, group callme, mode 0640)"
                    }
                    _ => "",
                };
                write!(
                    f,
                    "{}: cannot read the config file: {source}{hint}",
                    path.display()
                )
            }
            Error::Syntax { file, line, msg } | Error::Invalid { file, line, msg } => {
                if *line == 0 {
                    write!(f, "{file}: {msg}")
                } else {
                    write!(f, "{file}:{line}: {msg}")
                }
            }
            Error::Multiple(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
