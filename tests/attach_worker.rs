//! A recording upload never holds up the cards of other calls (issue #16 point 6): the real
//! `callme run` binary against the fake AMI and a fake portal whose upload endpoint is slow.
//! While one call's recording is still uploading, another call is registered, shown, hidden
//! and finished; `/healthz` stays 200; the upload completes afterwards.
mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::configs;
use support::daemon::Running;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;
use support::http::request;
use support::wait::wait_until;

const SECRET: &str = "amisecret-attach";
/// The recording the capture names (`CallMeFULLFNAME`, relative to the recordings root).
const RECORDING: &str = "2026/11/26/in-79991234567-8001231232-20261126-044735-1795668455.26.wav";
/// Far longer than the other call needs, so "finished before the upload" cannot be luck.
const UPLOAD_DELAY: Duration = Duration::from_secs(10);

fn ok_count(portal: &FakeBitrix, method: &str) -> usize {
    portal
        .commands()
        .iter()
        .filter(|r| r.method == method && r.status == 200)
        .count()
}

#[test]
fn cards_of_other_calls_go_out_while_a_recording_uploads_slowly() {
    let portal = FakeBitrix::start();
    portal.set_upload_delay(UPLOAD_DELAY);
    let ami = FakeAmi::start("callme", SECRET);
    let mut text = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    // The recordings root is a directory of the daemon's temp dir; files above 0.01 MiB go
    // through the upload URL.
    for (k, v) in [
        ("mode", "upload"),
        ("source", "callme"),
        ("pbx_root", "{state}/rec"),
        ("path_base", "{state}/rec"),
        ("upload_max", "0.01"),
        ("wait", "5"),
    ] {
        text = configs::set(&text, "recording", k, v);
    }
    let daemon = Running::start(&text, &["--debug"]);
    let rec = daemon.dir.path().join("state/rec").join(RECORDING);
    fs::create_dir_all(rec.parent().unwrap()).unwrap();
    let audio: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    fs::write(&rec, &audio).unwrap();
    let addr = daemon
        .ops_addr(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("HTTP not up; log:\n{}", daemon.log()));

    // The recorded call; its attach asks for an upload URL and starts the slow upload.
    assert!(
        ami.wait_accepted(1, Duration::from_secs(20)),
        "no AMI login"
    );
    assert!(ami.push(&support::capture_tail("h_inbound_recorded_mixmonitor.ami")));
    assert!(
        wait_until(Duration::from_secs(20), || ok_count(
            &portal,
            "telephony.externalcall.attachrecord"
        ) == 1),
        "no attachRecord; log:\n{}",
        daemon.log()
    );
    let upload_started = Instant::now();

    // Another call while the upload is in flight.
    let finishes = ok_count(&portal, "telephony.externalcall.finish");
    let shows = ok_count(&portal, "telephony.externalcall.show");
    // Another capture: its own Uniqueids.
    assert!(ami.push(&support::capture_tail("a_inbound_answered.ami")));
    let done = wait_until(UPLOAD_DELAY, || {
        ok_count(&portal, "telephony.externalcall.finish") > finishes
    });
    let took = upload_started.elapsed();
    let uploaded = portal.records().len();
    assert!(
        done,
        "the other call did not finish; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        uploaded, 0,
        "the upload ended before the other call was through, so this proves nothing"
    );
    assert!(
        ok_count(&portal, "telephony.externalcall.show") > shows,
        "the other call's card was not shown: {:?}\n{}",
        portal
            .commands()
            .iter()
            .map(|r| (r.method.clone(), r.status))
            .collect::<Vec<_>>(),
        daemon.log()
    );
    println!("other call registered, shown and finished {took:?} into a {UPLOAD_DELAY:?} upload");
    let health = request(&addr, "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", health.body);

    // And the upload itself completes, streamed whole.
    assert!(
        wait_until(UPLOAD_DELAY * 3, || portal.records().len() == 1),
        "no record; log:\n{}",
        daemon.log()
    );
    let r = &portal.records()[0];
    assert_eq!(r.via, "upload");
    assert_eq!(r.bytes, audio, "the uploaded bytes are the file");
}
