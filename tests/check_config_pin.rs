//! Pins what `callme check-config` prints, byte for byte: stdout, stderr and the exit code.
//!
//! The admin-facing texts (`FILE:LINE: what is wrong (what is allowed)`, the did-you-mean hints,
//! the warnings about risky settings) are a contract with the people who edit the file. This
//! test runs the real binary on every config in `tests/fixtures/check-config/` and on a few
//! cases built here (a missing file, a directory, bytes that are not UTF-8 or are control
//! characters), and compares the whole output with the committed `NAME.out`.
//!
//! Each case runs in a fresh temporary directory holding only `NAME.conf`, with the relative
//! path on the command line, so the `FILE:LINE` prefix does not depend on where the test runs.
//! The file mode is set explicitly (0640, or 0644 for the cases in [`WORLD_READABLE`]) because
//! a world-readable config draws a warning, and the checkout's mode depends on the umask.
//!
//! After an intended change of a message: `CALLME_BLESS=1 cargo test --test check_config_pin`
//! rewrites the `.out` files (and still fails, so a blessed run is never mistaken for a pass);
//! review the diff before committing it.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fixture cases that are written with mode 0644 to pin the "readable by every user" warning.
const WORLD_READABLE: &[&str] = &["ok_warnings"];

/// Cases whose input is not a committed `.conf` file: (name, how to create `NAME.conf`).
/// The expected output is still `tests/fixtures/check-config/NAME.out`.
const BUILT: &[(&str, Input)] = &[
    // The shipped example, as the RPM installs it.
    ("example", Input::Example),
    // No such file: the hint says how to create one.
    ("io_missing", Input::Absent),
    // Something that cannot be read as a file.
    ("io_directory", Input::Directory),
    // Latin-1 on line 7: the line of the first bad byte is named.
    (
        "not_utf8",
        Input::Bytes(
            b"[asterisk]\nusername = callme\nsecret = s3cret\n\
              [bitrix24]\nwebhook_url = https://portal.bitrix24.ru/rest/1/hookcode/\n\
              [calls]\nsystem_name = caf\xe9\n",
        ),
    ),
    // A control character inside a value (line 3), and a tab, which is allowed (line 2);
    // a byte-order mark and CRLF line ends, which are accepted.
    (
        "control_char",
        Input::Bytes(
            b"\xef\xbb\xbf[asterisk]\r\nusername = call\tme\r\nsecret = a\x01b\r\n\
              [bitrix24]\r\nwebhook_url = https://portal.bitrix24.ru/rest/1/hookcode/\r\n",
        ),
    ),
    // BOM and CRLF alone are fine.
    (
        "ok_bom_crlf",
        Input::Bytes(
            b"\xef\xbb\xbf[asterisk]\r\nusername = callme\r\nsecret = s3cret\r\n\
              [bitrix24]\r\nwebhook_url = https://portal.bitrix24.ru/rest/1/hookcode/\r\n\
              app_token = tok\r\n",
        ),
    ),
    // A tab inside caller_id: parsed by the INI step, refused as a control character later.
    (
        "caller_id_tab",
        Input::Bytes(
            b"[asterisk]\nusername = callme\nsecret = s3cret\n\
              [bitrix24]\nwebhook_url = https://portal.bitrix24.ru/rest/1/hookcode/\n\
              [originate]\ncaller_id = CRM\t{number}\n",
        ),
    ),
];

enum Input {
    Example,
    Absent,
    Directory,
    Bytes(&'static [u8]),
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check-config")
}

/// A directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("callme-pin-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Run `callme check-config NAME.conf` in `dir` and render everything it did as one text.
fn run(dir: &Path, name: &str) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(["check-config", &format!("{name}.conf")])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run callme");
    let code = match out.status.code() {
        Some(c) => c.to_string(),
        None => format!("{:?}", out.status),
    };
    let mut shown = format!("--- exit {code}\n--- stdout\n").into_bytes();
    shown.extend_from_slice(&out.stdout);
    shown.extend_from_slice(b"--- stderr\n");
    shown.extend_from_slice(&out.stderr);
    shown
}

fn write_conf(dir: &Path, name: &str, bytes: &[u8], mode: u32) {
    let path = dir.join(format!("{name}.conf"));
    fs::write(&path, bytes).expect("write config");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod config");
}

/// Every case: its name and its output now.
fn actual_outputs() -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    let mut names: Vec<String> = fs::read_dir(fixtures())
        .expect("read tests/fixtures/check-config")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|f| f.strip_suffix(".conf").map(str::to_string))
        .collect();
    names.sort();
    for name in names {
        let text = fs::read(fixtures().join(format!("{name}.conf"))).expect("read fixture");
        let mode = if WORLD_READABLE.contains(&name.as_str()) {
            0o644
        } else {
            0o640
        };
        let dir = Scratch::new(&name);
        write_conf(&dir.0, &name, &text, mode);
        let out = run(&dir.0, &name);
        cases.push((name, out));
    }
    for (name, input) in BUILT {
        assert!(
            !fixtures().join(format!("{name}.conf")).exists(),
            "{name} is built by the test; remove tests/fixtures/check-config/{name}.conf"
        );
        let dir = Scratch::new(name);
        match input {
            Input::Example => {
                let text =
                    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("callme.conf.example"))
                        .expect("read callme.conf.example");
                write_conf(&dir.0, name, &text, 0o640);
            }
            Input::Absent => {}
            Input::Directory => {
                fs::create_dir(dir.0.join(format!("{name}.conf"))).expect("mkdir");
            }
            Input::Bytes(b) => write_conf(&dir.0, name, b, 0o640),
        }
        let out = run(&dir.0, name);
        cases.push((name.to_string(), out));
    }
    cases
}

#[test]
fn check_config_output_is_pinned() {
    let bless = std::env::var_os("CALLME_BLESS").is_some();
    let cases = actual_outputs();
    assert!(cases.len() > BUILT.len(), "no fixture .conf files found");

    // Every committed .out belongs to a case, so a renamed case cannot leave a stale pin.
    for entry in fs::read_dir(fixtures()).expect("read fixtures") {
        let file = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(name) = file.strip_suffix(".out") {
            assert!(
                cases.iter().any(|(n, _)| n == name),
                "{file} has no case (no {name}.conf and not built by the test)"
            );
        }
    }

    let mut failures = Vec::new();
    for (name, actual) in &cases {
        let out_path = fixtures().join(format!("{name}.out"));
        if bless {
            fs::write(&out_path, actual).expect("write .out");
            continue;
        }
        match fs::read(&out_path) {
            Ok(expected) if &expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs\n=== expected ({})\n{}=== actual\n{}",
                out_path.display(),
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(actual)
            )),
            Err(e) => failures.push(format!(
                "{name}: cannot read {}: {e}\n=== actual\n{}",
                out_path.display(),
                String::from_utf8_lossy(actual)
            )),
        }
    }
    assert!(
        !bless,
        "CALLME_BLESS: rewrote {} .out files; review `git diff tests/fixtures/check-config` and rerun without CALLME_BLESS",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} check-config cases differ:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
