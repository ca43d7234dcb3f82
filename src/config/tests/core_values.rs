//! Values of [asterisk], [bitrix24] (webhook mode), [calls], [phone], [http] and [state].

use super::*;

#[test]
fn bad_bool() {
    let e = err(&with("calls", "crm_create = sure"));
    assert_eq!(
        e,
        "t.conf:7: [calls] crm_create = \"sure\": not a yes/no value \
         (allowed: yes, no, true, false, on, off, 1, 0)"
    );
    for (v, want) in [
        ("Yes", true),
        ("ON", true),
        ("1", true),
        ("False", false),
        ("off", false),
    ] {
        let cfg = parse_str(&with("calls", &format!("crm_create = {v}")), "t").unwrap();
        assert_eq!(cfg.calls.crm_create, want, "{v}");
    }
}

#[test]
fn bad_numbers() {
    let e = err(&with("asterisk", "port = 50a38"));
    assert_eq!(
        e,
        "t.conf:2: [asterisk] port = \"50a38\": not a whole number from 1 to 65535 (allowed: 1-65535)"
    );
    for bad in [
        "port = 0",
        "port = 65536",
        "port = -1",
        "port = ",
        "port = 1.5",
    ] {
        let e = err(&with("asterisk", bad));
        assert!(e.starts_with("t.conf:2: [asterisk] port = "), "{bad}: {e}");
    }
    let e = err(&with("http", "threads = 65"));
    assert!(e.contains("from 1 to 64"), "{e}");
    for bad in [
        "max_connections = 7",
        "max_connections = 30001",
        "idle_timeout = 0",
    ] {
        let e = err(&with("http", bad));
        assert!(e.starts_with("t.conf:7: [http] "), "{bad}: {e}");
    }
    let e = err(&with("bitrix24", "burst = 0"));
    assert!(e.starts_with("t.conf:5: [bitrix24] burst = \"0\""), "{e}");
    for bad in [
        "rate = 0",
        "rate = -1",
        "rate = inf",
        "rate = NaN",
        "rate = fast",
    ] {
        let e = err(&with("bitrix24", bad));
        assert!(e.contains("not a rate"), "{bad}: {e}");
    }
    let e = err(&with("phone", "national_length = 3"));
    assert!(e.contains("from 4 to 15"), "{e}");
}

#[test]
fn bad_durations() {
    for bad in [
        "0",
        "0.0",
        "-1",
        "1.2345",
        "10s",
        "",
        ".5",
        "86401",
        "1e3",
        "99999999999999",
    ] {
        let e = err(&with("asterisk", &format!("ping_interval = {bad}")));
        assert!(
            e.starts_with("t.conf:2: [asterisk] ping_interval = ")
                && e.contains("not a number of seconds"),
            "{bad}: {e}"
        );
    }
    let cfg = parse_str(&with("asterisk", "ping_interval = 86400"), "t").unwrap();
    assert_eq!(cfg.asterisk.ping_interval, secs(86_400));
}

#[test]
fn reconcile_interval_default_and_value() {
    let cfg = parse_str(&with("asterisk", ""), "t").unwrap();
    assert_eq!(cfg.asterisk.reconcile_interval, secs(300));
    let cfg = parse_str(&with("asterisk", "reconcile_interval = 30"), "t").unwrap();
    assert_eq!(cfg.asterisk.reconcile_interval, secs(30));
    let e = err(&with("asterisk", "reconcile_interval = 0"));
    assert!(e.contains("not a number of seconds"), "{e}");
}

#[test]
fn reconnect_max_below_min() {
    let e = err(&with("asterisk", "reconnect_min = 10\nreconnect_max = 5"));
    assert!(
        e.starts_with("t.conf:3: [asterisk] reconnect_max (5s) is less than reconnect_min (10s)"),
        "{e}"
    );
}

#[test]
fn bad_addresses_and_paths() {
    let e = err(&with("http", "listen = localhost:8080"));
    assert!(
        e.starts_with("t.conf:7: [http] listen = \"localhost:8080\": not an address"),
        "{e}"
    );
    let e = err(&with("http", "ops_listen = localhost:8081"));
    assert!(
        e.contains("[http] ops_listen = \"localhost:8081\": not an address"),
        "{e}"
    );
    for same in ["127.0.0.1:8080", "0.0.0.0:8080"] {
        let e = err(&with("http", &format!("ops_listen = {same}")));
        assert!(e.contains("ops_listen ("), "{same}: {e}");
        assert!(e.contains("is the address of listen"), "{same}: {e}");
    }
    // The token is a secret: a bad one is never repeated.
    for bad in [
        "short-token",
        "has a space in the middle",
        "tok\u{e9}n-with-non-ascii-x",
    ] {
        let e = err(&with("http", &format!("ops_token = {bad}")));
        assert!(e.contains("[http] ops_token: not a usable token"), "{e}");
        assert!(!e.contains(bad), "{e}");
    }
    let e = err(&with("http", "listen = 8080"));
    assert!(e.contains("IP:PORT"), "{e}");
    let e = err(&with("state", "dir = var/lib/callme"));
    assert!(e.contains("not an absolute path"), "{e}");
    let e = err(&with("state", "outbox_warn = 0"));
    assert!(e.contains("outbox_warn"), "{e}");
    let e = err(&with("asterisk", "host = pbx local"));
    assert!(e.contains("not a host"), "{e}");
    let e = err(&with("bitrix24", "domain = https://portal.bitrix24.ru"));
    assert!(e.contains("without https://"), "{e}");
}

#[test]
fn webhook_url_normalisation() {
    for (input, want) in [
        (
            "https://p.bitrix24.ru/rest/1/abc/",
            "https://p.bitrix24.ru/rest/1/abc/",
        ),
        (
            "https://p.bitrix24.ru/rest/1/abc",
            "https://p.bitrix24.ru/rest/1/abc/",
        ),
        (
            "https://p.bitrix24.ru/rest/1/abc//",
            "https://p.bitrix24.ru/rest/1/abc/",
        ),
        (
            "https://crm.example.com:8443/b24/rest/12/x9/",
            "https://crm.example.com:8443/b24/rest/12/x9/",
        ),
    ] {
        let text = MINIMAL.replace("https://p.bitrix24.ru/rest/7/c0de/", input);
        let cfg = parse_str(&text, "t").unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(cfg.bitrix24.webhook_url.as_ref().unwrap().expose(), want);
    }
}

#[test]
fn webhook_url_rejected() {
    for (input, why) in [
        (
            "p.bitrix24.ru/rest/1/zq9code/",
            "must start with https:// or http://",
        ),
        (
            "ftp://p.bitrix24.ru/rest/1/zq9code/",
            "must start with https://",
        ),
        (
            "https://p.bitrix24.ru/1/zq9code/",
            "does not contain /rest/",
        ),
        ("https://p.bitrix24.ru/rest/", "has nothing after /rest/"),
        ("https:///rest/1/zq9code/", "has no host name"),
        (
            "https://u:pw@p.bitrix24.ru/rest/1/zq9code/",
            "user:password@",
        ),
        (
            "https://p.bitrix24.ru/rest/1/zq9code/profile.json",
            "ends with a method name `profile.json`",
        ),
        (
            "https://p.bitrix24.ru/rest/1/zq9code/?x=1",
            "must not contain",
        ),
    ] {
        let text = MINIMAL.replace("https://p.bitrix24.ru/rest/7/c0de/", input);
        let e = err(&text);
        assert!(
            e.starts_with("t.conf:5: [bitrix24] webhook_url: "),
            "{input}: {e}"
        );
        assert!(e.contains(why), "{input}: {e}");
        assert!(!e.contains("zq9code"), "the code must not be echoed: {e}");
    }
}

#[test]
fn calls_values_checked() {
    for (line, why) in [
        ("system_name = call me", "not a system name"),
        ("system_name = ", "not a system name"),
        ("lines = 800123, 12", "12: phone number has 2 digits"),
        ("lines = 800-123", "bad phone number"),
        ("inbound_contexts = ", "at least one dialplan context"),
        (
            "inbound_contexts = from trunk",
            "not a dialplan context name",
        ),
        ("default_user = 1234567", "not an internal number"),
        ("default_user = 10a", "not an internal number"),
        ("responsible = manager", "allowed: crm, static"),
        ("static_responsible = 8001231231", "is not LINE:EXT"),
        ("static_responsible = 800x:219", "bad phone number"),
        (
            "static_responsible = 8001231231:abc",
            "not an internal number",
        ),
        ("static_responsible = 800123:1, 800123:2", "listed twice"),
        ("show_cards_to = 100, Bob", "not an internal number"),
        (
            "missed_user = nobody",
            "allowed: responsible, last_rang, default",
        ),
    ] {
        let e = err(&with("calls", line));
        assert!(e.starts_with("t.conf:7: [calls] "), "{line}: {e}");
        assert!(e.contains(why), "{line}: {e}");
    }
}

#[test]
fn calls_cross_checks() {
    let e = err(&with("calls", "responsible = static"));
    assert!(
        e.starts_with("t.conf:7: [calls] responsible = static needs static_responsible"),
        "{e}"
    );
    let e = err(&with("calls", "missed_user = default"));
    assert!(
        e.starts_with("t.conf:7: [calls] missed_user = default needs default_user"),
        "{e}"
    );
    // A bad value is reported once, not again by the cross-check.
    let e = err(&with(
        "calls",
        "responsible = static\nstatic_responsible = x",
    ));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("t.conf:8: [calls] static_responsible"), "{e}");
    let ok = with("calls", "missed_user = default\ndefault_user = 100");
    assert_eq!(
        parse_str(&ok, "t").unwrap().calls.missed_user,
        MissedUser::Default
    );
}

#[test]
fn phone_values_checked() {
    for line in [
        "country_code = 0",
        "country_code = 1234",
        "country_code = +7",
        "national_prefix = 8a",
        "national_prefix = 12345",
    ] {
        let e = err(&with("phone", line));
        assert!(e.starts_with("t.conf:7: [phone] "), "{line}: {e}");
    }
}
