//! `contrib/monitoring/`: every metric the Grafana dashboard and the Prometheus alert rules
//! use must exist in a real `/metrics` answer of the running binary, with the labels their
//! selectors name. The daemon runs in app mode (so the token metrics are there) against the
//! fake AMI, the fake portal and the fake OAuth server, with one answered call through it (so
//! the labelled counters and the card latency histogram have samples).
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::configs;
use support::daemon::Running;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;
use support::fake_oauth::FakeOAuth;
use support::http::{form, request};
use support::prometheus::{self, Exposition};
use support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-monitoring";

fn contrib(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/monitoring")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression in the dashboard: panel targets (`expr`) and template variable
/// queries (`query`, `definition`), wherever they are nested.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The `expr:` of every rule. The rules file keeps each on one line; a rule whose expr is
/// missing or spans lines makes the counts differ and fails the test.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let exprs: Vec<String> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    let alerts = yaml
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    assert!(alerts > 0, "no alert rules found");
    assert_eq!(exprs.len(), alerts, "one single-line expr per alert");
    assert!(
        exprs.iter().all(|e| !e.is_empty() && e != "|" && e != ">"),
        "{exprs:?}"
    );
    exprs
}

/// A metric used in an expression, with the label names its selector names (if any).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    name: String,
    labels: BTreeSet<String>,
}

/// The identifiers starting with `callme_` in a PromQL expression, with the label names in
/// the `{...}` right after each. Minimal on purpose: a name inside a string would be counted
/// too, which only makes the check stricter.
fn uses(expr: &str) -> Vec<Use> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < expr.len() {
        let at_start = i == 0 || !ident(b[i - 1] as char);
        if at_start && expr[i..].starts_with("callme_") {
            let end = expr[i..].find(|c| !ident(c)).map_or(expr.len(), |n| i + n);
            let name = expr[i..end].to_string();
            let mut labels = BTreeSet::new();
            if expr[end..].starts_with('{') {
                let close = expr[end..].find('}').expect("closing brace") + end;
                for m in expr[end + 1..close].split(',') {
                    let m = m.trim();
                    if m.is_empty() {
                        continue;
                    }
                    let lname = m.split(['=', '!', '~']).next().expect("label name").trim();
                    labels.insert(lname.to_string());
                }
            }
            out.push(Use { name, labels });
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// What in `used` the exposition lacks: a metric with no sample, or a selector label that no
/// sample of that metric carries. `instance` and `job` are added by Prometheus.
fn missing(used: &BTreeSet<Use>, exp: &Exposition) -> Vec<String> {
    let mut out = Vec::new();
    for u in used {
        if !exp.samples.iter().any(|s| s.name == u.name) {
            out.push(format!("metric {} has no sample in /metrics", u.name));
            continue;
        }
        let have = exp.label_names(&u.name);
        for l in &u.labels {
            if l != "instance" && l != "job" && !have.contains(l) {
                out.push(format!("{} has no label {l:?} (it has {have:?})", u.name));
            }
        }
    }
    out
}

fn used_names() -> BTreeSet<Use> {
    let dash: Value =
        serde_json::from_str(&contrib("callme-dashboard.json")).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "dashboard expressions: {exprs:?}");
    exprs.extend(rule_exprs(&contrib("callme-alerts.yml")));
    let used: BTreeSet<Use> = exprs.iter().flat_map(|e| uses(e)).collect();
    let names: BTreeSet<&str> = used.iter().map(|u| u.name.as_str()).collect();
    // What the brief asks the dashboard and the rules to cover.
    for want in [
        "callme_calls_finished_total",
        "callme_card_latency_seconds_bucket",
        "callme_bitrix24_queue_depth",
        "callme_bitrix24_oldest_pending_seconds",
        "callme_bitrix24_requests_total",
        "callme_bitrix24_retries_total",
        "callme_ami_up",
        "callme_bitrix24_token_refreshes_total",
        "callme_bitrix24_permanent_failures_total",
        "callme_bitrix24_token_expires_timestamp_seconds",
    ] {
        assert!(names.contains(want), "{want} is used nowhere: {names:?}");
    }
    used
}

fn install_body(portal: &FakeBitrix, (access, refresh): (String, String)) -> String {
    form(&[
        ("event", "ONAPPINSTALL"),
        ("data[VERSION]", "1"),
        ("auth[access_token]", &access),
        ("auth[refresh_token]", &refresh),
        ("auth[expires_in]", "3600"),
        ("auth[client_endpoint]", &portal.client_endpoint()),
        ("auth[member_id]", "member-1"),
        ("auth[domain]", &portal.host()),
        ("auth[application_token]", "application-token-1"),
    ])
}

fn metrics(addr: &str) -> Exposition {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    prometheus::parse(&r.body)
}

fn value(exp: &Exposition, series: &str) -> f64 {
    exp.samples
        .iter()
        .find(|s| s.series == series)
        .map_or(0.0, |s| s.value)
}

#[test]
fn every_metric_the_dashboard_and_rules_use_is_in_metrics() {
    let used = used_names();

    let portal = FakeBitrix::start();
    let first = portal.enable_app(1000);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let ami = FakeAmi::start("callme", SECRET);
    // App mode, the user directory (and so a token refresh) every second.
    let bitrix24 = configs::app_bitrix24(&portal.host(), &oauth.url());
    let config = configs::set(
        &configs::daemon(ami.port(), SECRET, &bitrix24),
        "http",
        "public_url",
        "https://pbx.example.com/callme/",
    );
    let daemon = Running::start(&config, &[]);
    let addr = daemon
        .http_addr(WAIT)
        .unwrap_or_else(|| panic!("no HTTP line; log:\n{}", daemon.log()));
    let ops = daemon.ops_addr(WAIT).expect("ops listener");
    assert!(ami.wait_accepted(1, WAIT), "AMI login");
    let r = request(
        &addr,
        "POST",
        "/bitrix24/install",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        install_body(&portal, first).as_bytes(),
    );
    assert_eq!(r.status, 200, "install: {}", r.body);
    assert!(
        wait_until(WAIT, || {
            let s: Value =
                serde_json::from_str(&request(&ops, "GET", "/status", &[], b"").body).unwrap();
            s["users"]["count"].as_u64().unwrap_or(0) > 0
        }),
        "users not loaded:\n{}",
        daemon.log()
    );

    // One answered call: a card shown (latency observed) and a finish (status counted).
    assert!(ami.push(&support::capture_tail("a_inbound_answered.ami")));
    // The tokens die; the next request (the user directory refresh, every second) refreshes.
    portal.expire_all();
    let mut exp = Exposition::default();
    let ready = wait_until(WAIT, || {
        exp = metrics(&ops);
        value(&exp, "callme_card_latency_seconds_count") >= 1.0
            && exp
                .samples
                .iter()
                .any(|s| s.name == "callme_calls_finished_total")
            && value(
                &exp,
                "callme_bitrix24_token_refreshes_total{outcome=\"ok\"}",
            ) >= 1.0
    });
    assert!(
        ready,
        "metrics not there yet: {:?}\nlog:\n{}",
        exp.samples.iter().map(|s| &s.series).collect::<Vec<_>>(),
        daemon.log()
    );

    let gaps = missing(&used, &exp);
    assert!(gaps.is_empty(), "{}", gaps.join("\n"));

    // The check can fail: a name the daemon does not export, and a label its metric lacks.
    let mut wrong = used.clone();
    wrong.extend(uses("rate(callme_cards_shown_total[5m])"));
    wrong.extend(uses("callme_ami_up{state=\"up\"}"));
    let gaps = missing(&wrong, &exp);
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(
        gaps[0].contains("callme_ami_up has no label \"state\""),
        "{gaps:?}"
    );
    assert!(gaps[1].contains("callme_cards_shown_total"), "{gaps:?}");
}

#[test]
fn the_expression_parser_finds_names_and_selector_labels() {
    let u = uses(
        "histogram_quantile(0.9, sum by (le) (rate(callme_card_latency_seconds_bucket{instance=~\"$instance\"}[5m]))) \
         / ignoring(x) my_callme_thing + callme_a{b!=\"1\", c=~\"x\"} + callme_b",
    );
    let got: Vec<(String, Vec<String>)> = u
        .into_iter()
        .map(|u| (u.name, u.labels.into_iter().collect()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "callme_card_latency_seconds_bucket".to_string(),
                vec!["instance".to_string()]
            ),
            (
                "callme_a".to_string(),
                vec!["b".to_string(), "c".to_string()]
            ),
            ("callme_b".to_string(), vec![]),
        ]
    );
}

/// The dashboard imports on another Grafana: the data source is an import input, never a
/// uid of ours, on every panel and every query.
#[test]
fn dashboard_uses_the_datasource_input_everywhere() {
    let dash: Value = serde_json::from_str(&contrib("callme-dashboard.json")).unwrap();
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(inputs
        .iter()
        .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"));
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate id");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24));
    }
}

#[test]
#[should_panic(expected = "buckets not cumulative")]
fn checker_refuses_a_non_cumulative_histogram() {
    prometheus::parse(
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"2\"} 2\n\
         h_bucket{le=\"+Inf\"} 3\nh_sum 1\nh_count 3\n",
    );
}

#[test]
#[should_panic(expected = "_count differs from the +Inf bucket")]
fn checker_refuses_a_histogram_whose_count_disagrees() {
    prometheus::parse(
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 3\n\
         h_sum 1\nh_count 4\n",
    );
}
