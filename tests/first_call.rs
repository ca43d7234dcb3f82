//! The first call after a start (issue #16: "The first call after a start can vanish without a
//! word"): the real `callme run` against an AMI server that begins a call at the moment of the
//! login. The AMI client used to read the call's first events while it waited for the Login
//! response and throw them away; the call's later events then named a Linkedid the tracker had
//! never seen, so the call was ignored, and nothing was logged. `callme replay` of the same
//! capture has no login, which is why it registered the call.
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::daemon::Running;
use support::fake_bitrix::FakeBitrix;

const SECRET: &str = "amisecret-first";

/// One AMI action as `key: value` lines (up to the blank line), or `None` at EOF.
fn read_action(r: &mut BufReader<TcpStream>) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            return Some(fields);
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// An AMI server whose PBX is busy: a call's first events are already on their way when the
/// Login action comes in, so they reach the socket before the Login response (then
/// `FullyBooted`, then the rest). Later actions get a bare `Response: Success`.
fn busy_ami(first: Vec<u8>, rest: Vec<u8>) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    thread::spawn(move || {
        let mut sent = false;
        for conn in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut out) = conn else { continue };
            let mut r = BufReader::new(out.try_clone().unwrap());
            let _ = out.write_all(b"Asterisk Call Manager/9.0.0\r\n");
            let (first, rest) = if sent {
                (Vec::new(), Vec::new())
            } else {
                (first.clone(), rest.clone())
            };
            sent = true;
            thread::spawn(move || {
                while let Some(action) = read_action(&mut r) {
                    let get = |k: &str| {
                        action
                            .iter()
                            .find(|(a, _)| a.eq_ignore_ascii_case(k))
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let id = get("ActionID");
                    let mut bytes = Vec::new();
                    if get("Action").eq_ignore_ascii_case("login") {
                        bytes.extend_from_slice(&first);
                        bytes.extend_from_slice(
                            format!(
                                "Response: Success\r\nActionID: {id}\r\n\
                                 Message: Authentication accepted\r\n\r\n\
                                 Event: FullyBooted\r\nPrivilege: system,all\r\n\
                                 Status: Fully Booted\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        bytes.extend_from_slice(&rest);
                    } else {
                        bytes.extend_from_slice(
                            format!("Response: Success\r\nActionID: {id}\r\n\r\n").as_bytes(),
                        );
                    }
                    if out.write_all(&bytes).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, stop)
}

/// Split a capture's event stream after its first `n` events.
fn split_events(bytes: &[u8], n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut at = 0;
    for _ in 0..n {
        match bytes[at..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => at += i + 4,
            None => break,
        }
    }
    (bytes[..at].to_vec(), bytes[at..].to_vec())
}

#[test]
fn a_call_whose_first_events_come_with_the_login_is_registered() {
    let portal = FakeBitrix::start();
    let tail = support::capture_tail("a_inbound_answered.ami");
    // SuccessfulAuth, then the call's Newchannel and the VarSets after it.
    let (first, rest) = split_events(&tail, 4);
    assert!(String::from_utf8_lossy(&first).contains("Event: Newchannel"));
    let (port, _stop) = busy_ami(first, rest);
    let daemon = Running::start(
        &support::configs::webhook(port, SECRET, &portal.webhook_url()),
        &["--debug"],
    );
    let finished = portal.wait_for_commands(
        |c| {
            c.iter()
                .any(|r| r.method == "telephony.externalcall.finish")
        },
        Duration::from_secs(20),
    );
    let log = daemon.log();
    assert!(finished, "the call vanished; log:\n{log}");
    let ok = |method: &str| {
        portal
            .commands()
            .into_iter()
            .filter(|r| r.method == method && r.status == 200)
            .count()
    };
    assert_eq!(ok("telephony.externalcall.register"), 1, "registered once");
    assert_eq!(ok("telephony.externalcall.finish"), 1, "finished once");
    assert!(
        log.contains("came before the Login response; kept"),
        "said so; log:\n{log}"
    );
}
