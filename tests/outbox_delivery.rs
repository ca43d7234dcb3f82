//! The durable outbox in process: a real tracker fed with renumbered captures, a real
//! `Deliverer` on its own thread (as in the daemon) and the fake portal over HTTP on
//! loopback. Covers the outage, rate-limit and torn-journal acceptance points.
mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use callme::ami::Message;
use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::limiter::{Limited, Limiter};
use callme::bitrix::outbox::{Outbox, OUTBOX_FILE};
use callme::bitrix::{api, Directory, Reply, Transport, WebhookClient};
use callme::calls::{Tracker, TrackerConfig};
use serde_json::Value;
use support::daemon::TempDir;
use support::fake_bitrix::{closed_port_url, FakeBitrix, Recorded};

const CALLS: usize = 100;

fn config() -> callme::config::Config {
    let text = "[asterisk]\nusername = u\nsecret = s\n\
                [bitrix24]\nwebhook_url = http://127.0.0.1:1/rest/1/testcode/\n\
                [calls]\ndefault_user = 201\n";
    callme::config::parse_str(text, "test").expect("test config")
}

fn deliver_config() -> DeliverConfig {
    let mut c = DeliverConfig::from_config(&config());
    // Short retries so the test does not wait for the production backoff.
    c.retry_min = Duration::from_millis(20);
    c.retry_max = Duration::from_millis(200);
    c
}

/// A capture's messages with every Uniqueid, Linkedid, bridge id and channel name made
/// unique to copy `n`, so that `n` copies are `n` independent calls.
fn renumbered(capture: &str, n: usize) -> Vec<(Message, u64)> {
    let bytes = fs::read(support::fixture_path(capture)).expect("capture");
    let cap = callme::replay::parse_bytes(&bytes);
    cap.messages
        .iter()
        .map(|t| {
            let mut m = Message::new();
            for (k, v) in t.msg.iter() {
                let key = k.to_ascii_lowercase();
                let renumber = key.ends_with("uniqueid")
                    || key.ends_with("linkedid")
                    || (key.ends_with("channel") && v.contains('-'));
                if renumber {
                    m.push(k, &format!("{v}x{n}"));
                } else {
                    m.push(k, v);
                }
            }
            (m, t.at_ms)
        })
        .collect()
}

/// Switches between a closed port (connection refused) and the portal.
struct Switch {
    refused: AtomicBool,
    closed: WebhookClient,
    portal: WebhookClient,
}

impl Transport for Switch {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, callme::bitrix::Error> {
        if self.refused.load(Ordering::SeqCst) {
            self.closed.call(method, params)
        } else {
            self.portal.call(method, params)
        }
    }
}

/// The delivery thread of the daemon, reduced: run what is due, then wait a little.
fn delivery(mut d: Deliverer, stop: Arc<AtomicBool>) -> JoinHandle<Deliverer> {
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let next = d.run_due(Instant::now());
            let wait = next
                .map_or(Duration::from_millis(5), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .clamp(Duration::from_millis(1), Duration::from_millis(5));
            thread::sleep(wait);
        }
        d
    })
}

/// Feed `CALLS` calls (answered and missed captures alternately) to a tracker, queueing the
/// intents in `outbox`, `gap` apart. Returns the EXTERNAL_CALL_IDs registered.
fn feed_calls(outbox: &Arc<Mutex<Outbox>>, employees: Vec<String>, gap: Duration) -> usize {
    let mut tracker = Tracker::new(TrackerConfig::default());
    tracker.set_employees(employees);
    let mut out = Vec::new();
    let mut registers = 0;
    for n in 0..CALLS {
        let capture = if n % 2 == 0 {
            "a_inbound_answered.ami"
        } else {
            "b_inbound_noanswer.ami"
        };
        for (msg, at) in renumbered(capture, n) {
            tracker.handle(&msg, at, &mut out);
        }
        let mut ob = outbox.lock().unwrap();
        for intent in out.drain(..) {
            if matches!(intent.action, callme::calls::Action::Register { .. }) {
                registers += 1;
            }
            ob.enqueue(intent);
        }
        drop(ob);
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
    registers
}

fn wait_drained(outbox: &Arc<Mutex<Outbox>>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if outbox.lock().unwrap().pending() == 0 {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Every call registered once and finished once, each call's steps in order.
fn assert_complete(portal: &FakeBitrix) {
    let cmds: Vec<Recorded> = portal.commands();
    let ok = |r: &Recorded| r.status == 200;
    let registers: Vec<&Recorded> = cmds
        .iter()
        .filter(|r| r.method == "telephony.externalcall.register" && ok(r))
        .collect();
    let ext: HashSet<&str> = registers
        .iter()
        .map(|r| r.params["EXTERNAL_CALL_ID"].as_str().unwrap())
        .collect();
    assert_eq!(registers.len(), CALLS, "registers");
    assert_eq!(ext.len(), CALLS, "one register per call");
    let finished = portal.finished_calls();
    assert_eq!(finished.len(), CALLS, "finishes");
    let finished_ext: HashSet<&str> = finished
        .iter()
        .map(|r| r["EXTERNAL_CALL_ID"].as_str().unwrap())
        .collect();
    assert_eq!(finished_ext, ext, "every registered call finished, once");
    assert!(portal.active_calls().is_empty());
    assert!(portal.open_cards().is_empty(), "{:?}", portal.open_cards());
    // Order per call: the finish is the call's last successful command and nothing for a
    // CALL_ID comes after its finish.
    let mut finish_at: HashMap<String, usize> = HashMap::new();
    for (i, r) in cmds.iter().enumerate() {
        if r.method == "telephony.externalcall.finish" && ok(r) {
            finish_at.insert(r.params["CALL_ID"].as_str().unwrap().to_string(), i);
        }
    }
    for (i, r) in cmds.iter().enumerate() {
        if let Some(id) = r.params.get("CALL_ID").and_then(Value::as_str) {
            if r.method != "telephony.externalcall.finish" {
                assert!(
                    finish_at.get(id).is_some_and(|&f| f > i),
                    "{} for {id} after its finish",
                    r.method
                );
            }
        }
    }
}

fn load_directory(t: &dyn Transport) -> Directory {
    Directory::from_users(api::users_all(t).expect("user.get"), Instant::now())
}

#[test]
fn outage_then_recovery_loses_and_duplicates_nothing() {
    let portal = FakeBitrix::start();
    let dir = TempDir::new("callme-outage");
    let outbox = Arc::new(Mutex::new(
        Outbox::open(dir.path(), 1000).expect("open outbox"),
    ));
    let switch = Arc::new(Switch {
        refused: AtomicBool::new(true),
        closed: WebhookClient::new(&closed_port_url(), Duration::from_secs(2)),
        portal: WebhookClient::new(&portal.webhook_url(), Duration::from_secs(5)),
    });
    let directory = load_directory(&switch.portal);
    let employees: Vec<String> = directory.inners().map(String::from).collect();
    let d = Deliverer::with_outbox(
        deliver_config(),
        Box::new(switch.clone()),
        directory,
        outbox.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let worker = delivery(d, stop.clone());

    // Connection refused while the calls come in…
    let registers = feed_calls(&outbox, employees, Duration::ZERO);
    assert_eq!(registers, CALLS);
    // …then the portal answers, but with its maintenance page…
    portal.set_down(true);
    switch.refused.store(false, Ordering::SeqCst);
    assert!(
        portal.wait_for(
            |r| r.iter().filter(|r| r.status == 503).count() >= 3,
            Duration::from_secs(10)
        ),
        "no attempt while down"
    );
    assert!(outbox.lock().unwrap().pending() > 0);
    // …and comes back.
    let back = Instant::now();
    portal.set_down(false);
    assert!(
        wait_drained(&outbox, Duration::from_secs(20)),
        "{} step(s) left",
        outbox.lock().unwrap().pending()
    );
    let recovery = back.elapsed();
    stop.store(true, Ordering::SeqCst);
    let d = worker.join().unwrap();
    eprintln!(
        "outage: drained {CALLS} calls {recovery:?} after the portal came back; \
         {} retries, {} requests while down",
        d.stats().retries,
        portal.requests().iter().filter(|r| r.status == 503).count()
    );
    assert_eq!(
        d.stats().permanent_failures,
        0,
        "{:?}",
        d.stats().last_error
    );
    assert_complete(&portal);
    assert!(
        portal.requests().iter().any(|r| r.method == "batch"),
        "the backlog went out in batches"
    );
}

#[test]
fn a_burst_of_calls_stays_under_the_portal_rate_limit() {
    let portal = FakeBitrix::start();
    portal.set_rate_limit(2.0, 50);
    let dir = TempDir::new("callme-rate");
    let outbox = Arc::new(Mutex::new(
        Outbox::open(dir.path(), 1000).expect("open outbox"),
    ));
    let limiter = Limiter::new(2.0, 50);
    let transport = Arc::new(Limited::new(
        WebhookClient::new(&portal.webhook_url(), Duration::from_secs(5)),
        limiter,
    ));
    let directory = load_directory(&transport);
    let employees: Vec<String> = directory.inners().map(String::from).collect();
    let d = Deliverer::with_outbox(
        deliver_config(),
        Box::new(transport),
        directory,
        outbox.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let worker = delivery(d, stop.clone());

    let started = Instant::now();
    // 100 calls within one second.
    feed_calls(&outbox, employees, Duration::from_millis(9));
    let fed = started.elapsed();
    assert!(fed < Duration::from_millis(1500), "feeding took {fed:?}");
    assert!(
        wait_drained(&outbox, Duration::from_secs(25)),
        "{} step(s) left",
        outbox.lock().unwrap().pending()
    );
    let drain = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let d = worker.join().unwrap();
    let reqs = portal.requests();
    eprintln!(
        "rate limit: {CALLS} calls drained in {drain:?} with {} HTTP requests ({} batches)",
        reqs.len(),
        reqs.iter().filter(|r| r.method == "batch").count()
    );
    assert_eq!(
        reqs.iter().filter(|r| r.status == 503).count(),
        0,
        "503s from the portal"
    );
    assert_eq!(d.stats().retries, 0);
    assert_complete(&portal);
}

#[test]
fn a_torn_outbox_journal_loads() {
    let dir = TempDir::new("callme-torn");
    let path = dir.path().join(OUTBOX_FILE);
    let step = |seq: u64, call: &str| {
        format!(
            r#"{{"t":"step","seq":{seq},"call":"{call}","at":1,"action":{{"show":{{"ext":"219"}}}}}}"#
        )
    };
    let full = format!("{}\n{}\n", step(1, "a"), step(2, "b"));
    let torn = step(3, "c");
    fs::write(&path, format!("{full}{}", &torn[..torn.len() / 2])).unwrap();
    let ob = Outbox::open(dir.path(), 1000).expect("a torn journal still loads");
    assert_eq!(ob.pending(), 2, "intact entries kept");
    assert!(ob.call("a").is_some() && ob.call("b").is_some());
    assert!(ob.call("c").is_none(), "the torn line is skipped");
    // Rewritten without the torn tail.
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n') && !text.contains("\"c\""), "{text}");
}
