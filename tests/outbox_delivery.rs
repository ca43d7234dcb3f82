//! The durable outbox in process: a real tracker fed with renumbered captures, the daemon's
//! own delivery thread (`daemon::delivery_loop`) with a real `Deliverer`, and the fake portal
//! over HTTP on loopback. Covers the outage, rate-limit and torn-journal acceptance points.
mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use callme::bitrix::deliver::{DeliverConfig, Deliverer, DeliveryStats};
use callme::bitrix::limiter::{Limited, Limiter};
use callme::bitrix::outbox::{Outbox, OUTBOX_FILE};
use callme::bitrix::{api, Directory, Reply, SharedDirectory, Transport, WebhookClient};
use callme::calls::{Tracker, TrackerConfig};
use callme::context::{Control, Health};
use callme::daemon::delivery_loop;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde_json::Value;
use support::captures::alternating_call;
use support::daemon::TempDir;
use support::fake_bitrix::{closed_port_url, FakeBitrix, Recorded};
use support::wait::{wait_for, wait_until};

const CALLS: usize = 100;
/// Longer than any test: the directory is loaded once, when the loop starts.
const NO_REFRESH: Duration = Duration::from_secs(3600);

fn deliver_config() -> DeliverConfig {
    let text = support::configs::set(
        &support::configs::offline("http://127.0.0.1:1/rest/1/testcode/"),
        "calls",
        "default_user",
        "201",
    );
    let mut c = DeliverConfig::from_config(&support::configs::parse(&text));
    // Short retries so the test does not wait for the production backoff.
    c.retry_min = Duration::from_millis(20);
    c.retry_max = Duration::from_millis(200);
    c
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

/// The daemon's delivery thread, wired as `Daemon::start` wires it, with the test in the
/// state thread's place: it puts intents in the outbox and wakes the loop.
struct Delivery {
    wake: Sender<()>,
    stop: Sender<()>,
    /// What the loop tells the state thread (the employees after each directory load).
    control: Receiver<Control>,
    health: Arc<Health>,
    thread: JoinHandle<()>,
}

impl Delivery {
    fn start(d: Deliverer) -> Delivery {
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let (ctl_tx, ctl_rx) = unbounded::<Control>();
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let health = Arc::new(Health::default());
        let h = health.clone();
        let thread =
            thread::spawn(move || delivery_loop(d, wake_rx, ctl_tx, stop_rx, NO_REFRESH, h));
        Delivery {
            wake: wake_tx,
            stop: stop_tx,
            control: ctl_rx,
            health,
            thread,
        }
    }

    /// The employees of the loop's first directory load, as the state thread gets them.
    fn employees(&self) -> Vec<String> {
        match self.control.recv_timeout(Duration::from_secs(10)) {
            Ok(Control::Employees(list)) => list,
            other => panic!("expected the employees from the delivery loop, got {other:?}"),
        }
    }

    /// Stop the loop as the daemon does (the stop channel closes); its last stats.
    fn stop(self) -> DeliveryStats {
        drop(self.stop);
        self.thread.join().expect("delivery thread");
        let view = self.health.delivery.lock().unwrap();
        view.stats.clone()
    }
}

/// Feed `CALLS` calls (answered and missed captures alternately) to a tracker, `gap` apart,
/// putting the intents in `outbox` and waking the delivery loop as the state thread does.
/// Returns how many calls were registered.
fn feed_calls(
    outbox: &Arc<Mutex<Outbox>>,
    wake: &Sender<()>,
    employees: Vec<String>,
    gap: Duration,
) -> usize {
    let mut tracker = Tracker::new(TrackerConfig::default());
    tracker.set_employees(employees);
    let mut registers = 0;
    for n in 0..CALLS {
        let intents = alternating_call(&mut tracker, n);
        let mut ob = outbox.lock().unwrap();
        for intent in intents {
            if matches!(intent.action, callme::calls::Action::Register { .. }) {
                registers += 1;
            }
            ob.enqueue(intent);
        }
        drop(ob);
        let _ = wake.try_send(());
        if !gap.is_zero() {
            // Pacing the load (calls arriving over time), not waiting for anything.
            thread::sleep(gap);
        }
    }
    registers
}

fn wait_drained(outbox: &Arc<Mutex<Outbox>>, timeout: Duration) -> bool {
    wait_until(timeout, || outbox.lock().unwrap().pending() == 0)
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
    // The portal is unreachable when the loop starts, so its own directory load fails: the
    // directory of an earlier load is what the deliverer has.
    let directory = load_directory(&switch.portal);
    let employees: Vec<String> = directory.inners().map(String::from).collect();
    let d = Deliverer::with_outbox(
        deliver_config(),
        Box::new(switch.clone()),
        SharedDirectory::loaded(directory),
        outbox.clone(),
    );
    let delivery = Delivery::start(d);

    // Connection refused while the calls come in…
    let registers = feed_calls(&outbox, &delivery.wake, employees, Duration::ZERO);
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
    let stats = delivery.stop();
    eprintln!(
        "outage: drained {CALLS} calls {recovery:?} after the portal came back; \
         {} retries, {} requests while down",
        stats.retries,
        portal.requests().iter().filter(|r| r.status == 503).count()
    );
    assert!(stats.retries > 0, "the outage was never noticed: {stats:?}");
    assert_eq!(stats.permanent_failures, 0, "{:?}", stats.last_error);
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
    // No directory yet: the loop loads it, through the same rate limiter, and hands the
    // employees to the "state thread".
    let d = Deliverer::with_outbox(
        deliver_config(),
        Box::new(transport),
        SharedDirectory::not_loaded(),
        outbox.clone(),
    );
    let delivery = Delivery::start(d);
    let employees = delivery.employees();
    assert!(!employees.is_empty(), "the fake portal has employees");
    let users = wait_for(Duration::from_secs(10), || {
        let n = delivery.health.delivery.lock().unwrap().users;
        (n > 0).then_some(n)
    });
    assert_eq!(users, Some(employees.len()), "/status sees the directory");

    let started = Instant::now();
    // 100 calls, 9 ms apart: about a second on an idle machine. Their ~400 requests are far
    // more than the portal's 2 a second allow however long feeding takes on a busy one, so the
    // feeding time is a figure to print, not a condition.
    feed_calls(&outbox, &delivery.wake, employees, Duration::from_millis(9));
    let fed = started.elapsed();
    assert!(
        wait_drained(&outbox, Duration::from_secs(25)),
        "{} step(s) left",
        outbox.lock().unwrap().pending()
    );
    let drain = started.elapsed();
    let stats = delivery.stop();
    let reqs = portal.requests();
    eprintln!(
        "rate limit: {CALLS} calls fed in {fed:?}, drained in {drain:?} with {} HTTP requests \
         ({} batches)",
        reqs.len(),
        reqs.iter().filter(|r| r.method == "batch").count()
    );
    assert_eq!(
        reqs.iter().filter(|r| r.status == 503).count(),
        0,
        "503s from the portal"
    );
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.permanent_failures, 0, "{:?}", stats.last_error);
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
