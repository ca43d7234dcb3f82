//! The log format under systemd: when stderr is the journal stream named by `JOURNAL_STREAM`,
//! every line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//! debug); otherwise the lines are as before. Runs the real binary with stderr sent to a file
//! whose device and inode stand in for the journal's socket.
mod support;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use support::configs;
use support::daemon::TempDir;
use support::fake_bitrix::FakeBitrix;

/// What the journal stream variable says about stderr.
#[derive(Clone, Copy)]
enum Stream {
    /// Not set: a terminal or a plain redirect.
    Unset,
    /// Set to stderr's own `dev:ino`: stderr is the journal.
    Stderr,
    /// Set, but to another file: inherited by a process whose stderr was redirected.
    Other,
}

/// Runs callme with `args` and the given stream variable; returns its stderr lines.
fn run(dir: &TempDir, args: &[&str], stream: Stream) -> Vec<String> {
    let path = dir.path().join("stderr.txt");
    let file = File::create(&path).expect("create the stderr file");
    let meta = file.metadata().expect("stat the stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callme"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    match stream {
        Stream::Unset => {}
        Stream::Stderr => {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        Stream::Other => {
            let other = File::create(dir.path().join("other.txt")).expect("create a file");
            let m = other.metadata().expect("stat it");
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
    }
    cmd.status().expect("run callme");
    std::fs::read_to_string(&path)
        .expect("read stderr")
        .lines()
        .map(String::from)
        .collect()
}

/// A config that `check-config` accepts with warnings (plain-http webhook, no app_token).
fn warning_config(dir: &TempDir, webhook_url: &str) -> String {
    let path = dir.path().join("callme.conf");
    std::fs::write(&path, configs::offline(webhook_url)).expect("write the config");
    path.to_string_lossy().into_owned()
}

fn has_line(lines: &[String], start: &str, text: &str) -> bool {
    lines
        .iter()
        .any(|l| l.starts_with(start) && l.contains(text))
}

#[test]
fn warnings_carry_priority_4_only_when_stderr_is_the_journal() {
    let dir = TempDir::new("journald-warn");
    let conf = warning_config(&dir, "http://127.0.0.1:9/rest/1/code/");
    let args = ["check-config", conf.as_str()];

    let journal = run(&dir, &args, Stream::Stderr);
    assert!(
        has_line(&journal, "<4>[WARN  callme::config] ", "app_token is empty"),
        "{journal:#?}"
    );
    assert!(journal.iter().all(|l| l.starts_with("<4>")), "{journal:#?}");

    for stream in [Stream::Unset, Stream::Other] {
        let plain = run(&dir, &args, stream);
        assert!(
            has_line(&plain, "[WARN  callme::config] ", "app_token is empty"),
            "{plain:#?}"
        );
        assert!(plain.iter().all(|l| !l.starts_with('<')), "{plain:#?}");
    }
}

#[test]
fn error_info_and_debug_lines_get_3_6_and_7() {
    let portal = FakeBitrix::start();
    let dir = TempDir::new("journald-levels");
    let capture = support::fixture_path("a_inbound_answered.ami");
    let capture = capture.to_string_lossy();
    // A replay to the fake portal with no default_user and an empty CRM: the register step
    // fails for good (error), the summary is info, and --debug logs every request.
    let conf = warning_config(&dir, &portal.webhook_url());
    let args = ["replay", "-c", conf.as_str(), "--debug", capture.as_ref()];

    let journal = run(&dir, &args, Stream::Stderr);
    for (prefix, text) in [
        (
            "<3>[ERROR callme::bitrix::deliver] ",
            "register failed permanently",
        ),
        ("<6>[INFO  callme::cmd::replay_capture] ", "replayed"),
        ("<7>[DEBUG callme::bitrix::client] ", "bitrix24 -> POST"),
    ] {
        assert!(has_line(&journal, prefix, text), "{prefix}: {journal:#?}");
    }
    let priorities = ["<3>[ERROR ", "<4>[WARN  ", "<6>[INFO  ", "<7>[DEBUG "];
    assert!(
        journal
            .iter()
            .all(|l| priorities.iter().any(|p| l.starts_with(p))),
        "{journal:#?}"
    );

    let plain = run(&dir, &args, Stream::Unset);
    for (prefix, text) in [
        (
            "[ERROR callme::bitrix::deliver] ",
            "register failed permanently",
        ),
        ("[INFO  callme::cmd::replay_capture] ", "replayed"),
        ("[DEBUG callme::bitrix::client] ", "bitrix24 -> POST"),
    ] {
        assert!(has_line(&plain, prefix, text), "{prefix}: {plain:#?}");
    }
    assert!(plain.iter().all(|l| !l.starts_with('<')), "{plain:#?}");
}
