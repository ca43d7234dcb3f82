//! The `callme` binary's command-line contract: exit codes, check-config, replay --dry-run,
//! demo. These run the real binary.
mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::daemon::TempDir;

fn callme(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run callme")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_and_help() {
    let out = callme(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("callme {}", env!("CARGO_PKG_VERSION"))
    );
    let out = callme(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for sub in ["run", "check-config", "replay", "demo", "ami-events"] {
        assert!(help.contains(sub), "help lacks {sub}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["rnu"],
        &[],
        &["replay"],
        &["run", "extra"],
    ] {
        let out = callme(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).starts_with("error: "), "{args:?}");
    }
}

#[test]
fn example_config_is_valid() {
    for args in [
        &["check-config", "callme.conf.example"][..],
        &["check-config", "-c", "callme.conf.example"],
    ] {
        let out = callme(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("callme.conf.example: ok"));
    }
}

#[test]
fn typo_in_config_names_file_and_line() {
    let dir = TempDir::new("callme-cli");
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("callme.conf.example"),
    )
    .unwrap();
    let line = example
        .lines()
        .position(|l| l.starts_with("username"))
        .expect("username line")
        + 1;
    let bad = example.replacen("username", "usernmae", 1);
    let path = dir.path().join("bad.conf");
    std::fs::write(&path, bad).unwrap();
    let out = callme(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let want = format!("{}:{line}: ", path.display());
    assert!(err.contains(&want), "expected {want:?} in {err}");
    assert!(err.contains("usernmae"), "{err}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = callme(&["check-config", "/nonexistent/callme.conf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/callme.conf"));
}

fn dry_run(capture: &str) -> Vec<Value> {
    let path = format!("tests/fixtures/{capture}");
    let out = callme(&["replay", "--dry-run", &path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn replay_dry_run_prints_one_json_request_per_line() {
    let lines = dry_run("a_inbound_answered.ami");
    for l in &lines {
        assert!(l["method"].is_string() && l["params"].is_object(), "{l}");
        assert_eq!(l.as_object().unwrap().len(), 2, "{l}");
    }
    let methods: Vec<&str> = lines
        .iter()
        .map(|l| l["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        vec![
            "user.get",
            "telephony.externalCall.searchCrmEntities",
            "telephony.externalcall.register",
            "telephony.externalcall.show",
            "telephony.externalcall.finish",
        ]
    );
    let reg = &lines[2]["params"];
    assert_eq!(
        reg["USER_ID"], 1,
        "the dry-run CRM contact's responsible user"
    );
    assert_eq!(
        reg["CALL_START_DATE"], "2026-11-26T04:44:45+00:00",
        "capture clock"
    );
    assert_eq!(lines[3]["params"]["USER_ID"], serde_json::json!([19]));
    let fin = &lines[4]["params"];
    assert_eq!(fin["USER_ID"], 19);
    assert_eq!(fin["STATUS_CODE"], "200");
    assert_eq!(fin["DURATION"], 5, "replay runs on the capture's clock");
}

#[test]
fn replay_dry_run_of_an_internal_call_sends_nothing_but_the_user_load() {
    let lines = dry_run("l_internal_219_to_220.ami");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["method"], "user.get");
}

#[test]
fn replay_without_dry_run_needs_a_config() {
    let out = callme(&["replay", "tests/fixtures/a_inbound_answered.ami"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--dry-run"));
}

#[test]
fn demo_runs_offline() {
    let out = callme(&["demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("register inbound from 79991234567"), "{s}");
    assert!(
        s.contains("show card to 220") && s.contains("show card to 221"),
        "{s}"
    );
    assert!(s.contains("hide card from 220"), "{s}");
    assert!(s.contains("finish under 221: status 200, 4 s"), "{s}");
    assert!(s.contains("→ telephony.externalcall.finish"), "{s}");
}
