//! The open-files limit (`RLIMIT_NOFILE`), read and raised through libc's
//! `getrlimit`/`setrlimit`.
//!
//! The only unsafe code in callme: std has no call for resource limits and the design allows
//! no `libc` crate, so the two functions are declared here by hand. The declarations match
//! glibc and musl on 64-bit Linux (`rlim_t` is `unsigned long`, `RLIMIT_NOFILE` is 7 on
//! x86_64 and aarch64); elsewhere the functions report `Unsupported` and callme runs with the
//! limit it was given.

use std::io;

/// The soft (enforced) and hard (ceiling) limits on open descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// The soft limit to ask for: the hard limit, at most `cap`, and never lower than now.
/// Go's runtime does the same at start on Linux (cap there: the hard limit only).
pub fn raised(now: NoFile, cap: u64) -> u64 {
    now.hard.min(cap).max(now.soft)
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod sys {
    use std::ffi::{c_int, c_ulong};
    use std::io;

    const RLIMIT_NOFILE: c_int = 7;

    #[repr(C)]
    struct RLimit {
        cur: c_ulong,
        max: c_ulong,
    }

    extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
    }

    pub fn get() -> io::Result<(u64, u64)> {
        let mut r = RLimit { cur: 0, max: 0 };
        // SAFETY: `r` is a valid, writable `struct rlimit` for the duration of the call.
        if unsafe { getrlimit(RLIMIT_NOFILE, &mut r) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((r.cur, r.max))
    }

    pub fn set(soft: u64, hard: u64) -> io::Result<()> {
        let r = RLimit {
            cur: soft,
            max: hard,
        };
        // SAFETY: `r` is a valid `struct rlimit`; setrlimit only reads it.
        if unsafe { setrlimit(RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod sys {
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "RLIMIT_NOFILE is only handled on 64-bit Linux",
        )
    }

    pub fn get() -> io::Result<(u64, u64)> {
        Err(unsupported())
    }

    pub fn set(_soft: u64, _hard: u64) -> io::Result<()> {
        Err(unsupported())
    }
}

/// The current limits of this process.
pub fn nofile() -> io::Result<NoFile> {
    sys::get().map(|(soft, hard)| NoFile { soft, hard })
}

/// Raise the soft limit to the hard limit, at most `cap` (see [`raised`]). Returns the
/// limits before and after. The hard limit is left alone: only root could raise it.
pub fn raise_nofile(cap: u64) -> io::Result<(NoFile, NoFile)> {
    let before = nofile()?;
    let soft = raised(before, cap);
    if soft != before.soft {
        sys::set(soft, before.hard)?;
    }
    Ok((before, nofile()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_takes_the_hard_limit_up_to_the_cap_and_never_lowers() {
        let l = |soft, hard| NoFile { soft, hard };
        assert_eq!(raised(l(1024, 524_288), 65_536), 65_536);
        assert_eq!(raised(l(1024, 4096), 65_536), 4096);
        assert_eq!(raised(l(1024, u64::MAX), 65_536), 65_536, "RLIM_INFINITY");
        assert_eq!(
            raised(l(100_000, u64::MAX), 65_536),
            100_000,
            "never lowered"
        );
        assert_eq!(raised(l(1024, 1024), 65_536), 1024);
    }

    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn reads_the_same_limits_as_proc() {
        let l = nofile().unwrap();
        assert!(l.soft <= l.hard);
        // /proc/self/limits: "Max open files  SOFT  HARD  files"
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| match w {
                "unlimited" => Some(u64::MAX),
                w => w.parse().ok(),
            })
            .collect();
        assert_eq!(nums, [l.soft, l.hard], "{line}");
    }
}
