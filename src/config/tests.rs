use super::*;

const EXAMPLE: &str = include_str!("../../callme.conf.example");

/// The smallest valid file: only the required keys.
const MINIMAL: &str = "[asterisk]\nusername = u\nsecret = s3cr3t\n\
                       [bitrix24]\nwebhook_url = https://p.bitrix24.ru/rest/7/c0de/\n";

fn err(text: &str) -> String {
    parse_str(text, "t.conf").unwrap_err().to_string()
}

/// MINIMAL plus extra lines appended to the named section (added as a new section if absent).
fn with(section: &str, lines: &str) -> String {
    let header = format!("[{section}]\n");
    match MINIMAL.find(&header) {
        Some(i) => {
            let at = i + header.len();
            format!("{}{lines}\n{}", &MINIMAL[..at], &MINIMAL[at..])
        }
        None => format!("{MINIMAL}{header}{lines}\n"),
    }
}

/// Line number (1-based) of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("callme.conf.example");
    let cfg = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.source, path);
    assert_eq!(cfg.asterisk.username, "callme");
    assert_eq!(cfg.asterisk.port, 5038);
    assert_eq!(
        cfg.bitrix24.webhook_url.as_ref().unwrap().expose(),
        "https://portal.bitrix24.ru/rest/1/abcdef/"
    );
    assert!(cfg.bitrix24.app_token.is_none());
    assert_eq!(cfg.calls.lines, vec!["8001231231", "8002345678"]);
    assert_eq!(cfg.calls.inbound_contexts, vec!["from-trunk", "from-pstn"]);
    assert_eq!(cfg.calls.default_user.as_deref(), Some("100"));
    assert_eq!(cfg.http.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.state.dir, PathBuf::from("/var/lib/callme"));
}

#[test]
fn example_lists_every_key_with_its_default() {
    let raw = ini::parse(EXAMPLE, "callme.conf.example").unwrap();
    for (section, keys) in SCHEMA {
        let s = raw
            .section(section)
            .unwrap_or_else(|| panic!("[{section}] missing from the example"));
        for key in *keys {
            assert!(
                s.get(key).is_some(),
                "[{section}] {key} missing from the example"
            );
        }
    }
    // Apart from the credentials and the contract's sample values, the example shows defaults.
    let cfg = parse_str(EXAMPLE, "callme.conf.example").unwrap();
    let defaults = parse_str(MINIMAL, "t").unwrap();
    assert_eq!(cfg.phone, PhoneConfig::default());
    assert_eq!(cfg.http, HttpConfig::default());
    assert_eq!(cfg.state, StateConfig::default());
    assert_eq!(cfg.recording, RecordingConfig::default());
    assert_eq!(
        CallsConfig {
            lines: vec![],
            default_user: None,
            ..cfg.calls.clone()
        },
        CallsConfig::default()
    );
    let (a, d) = (&cfg.asterisk, &defaults.asterisk);
    assert_eq!(
        (a.host.as_str(), a.port, a.ping_interval, a.ping_timeout),
        (d.host.as_str(), d.port, d.ping_interval, d.ping_timeout)
    );
    assert_eq!(
        (a.connect_timeout, a.reconnect_min, a.reconnect_max),
        (d.connect_timeout, d.reconnect_min, d.reconnect_max)
    );
    let (b, d) = (&cfg.bitrix24, &defaults.bitrix24);
    assert_eq!(
        (b.timeout, b.users_refresh, b.rate, b.burst),
        (d.timeout, d.users_refresh, d.rate, d.burst)
    );
}

#[test]
fn defaults() {
    let cfg = parse_str(MINIMAL, "t.conf").unwrap();
    let a = &cfg.asterisk;
    assert_eq!(a.host, "127.0.0.1");
    assert_eq!(a.port, 5038);
    assert_eq!(a.secret.expose(), "s3cr3t");
    assert_eq!(a.ping_interval, Duration::from_secs(10));
    assert_eq!(a.ping_timeout, Duration::from_secs(5));
    assert_eq!(a.connect_timeout, Duration::from_secs(5));
    assert_eq!(a.reconnect_min, Duration::from_secs(1));
    assert_eq!(a.reconnect_max, Duration::from_secs(30));
    let b = &cfg.bitrix24;
    assert!(b.app_token.is_none() && b.domain.is_none() && b.member_id.is_none());
    assert_eq!(b.timeout, Duration::from_secs(10));
    assert_eq!(b.users_refresh, Duration::from_secs(300));
    assert_eq!(b.rate, 2.0);
    assert_eq!(b.burst, 50);
    assert_eq!(cfg.calls, CallsConfig::default());
    assert_eq!(cfg.phone, PhoneConfig::default());
    assert_eq!(cfg.http.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.http.threads, 4);
    assert_eq!(cfg.state.dir, PathBuf::from("/var/lib/callme"));
    assert_eq!(cfg.source, PathBuf::from("t.conf"));
}

#[test]
fn every_value_parsed() {
    let text = "\
[asterisk]
host = pbx.local
port = 5039
username = u
secret = s
ping_interval = 2.5
ping_timeout = 0.25
connect_timeout = 3
reconnect_min = 2
reconnect_max = 2
[bitrix24]
webhook_url = http://b24.local/rest/1/xyz
app_token = tok
domain = b24.local
member_id = abc123
timeout = 20
users_refresh = 60
rate = 0.5
burst = 1
[calls]
system_name = pbx-1.office_2
lines = +74951234567, 8001231231,
inbound_contexts = from-trunk-sip
default_user = 219
responsible = Static
static_responsible = 8001231231:219, +74951234567 : 220
crm_create = YES
show_cards_to = 219, 220
add_to_chat = off
missed_user = last_rang
[phone]
country_code = 49
national_prefix =
national_length = 11
[http]
listen = [::]:9090
threads = 64
[state]
dir = /tmp/callme
outbox_warn = 50
";
    let cfg = parse_str(text, "t").unwrap_or_else(|e| panic!("{e}"));
    let a = &cfg.asterisk;
    assert_eq!((a.host.as_str(), a.port), ("pbx.local", 5039));
    assert_eq!(a.ping_interval, Duration::from_millis(2500));
    assert_eq!(a.ping_timeout, Duration::from_millis(250));
    assert_eq!(a.reconnect_min, a.reconnect_max);
    let b = &cfg.bitrix24;
    assert_eq!(
        b.webhook_url.as_ref().unwrap().expose(),
        "http://b24.local/rest/1/xyz/"
    );
    assert_eq!(b.app_token.as_ref().unwrap().expose(), "tok");
    assert_eq!(b.domain.as_deref(), Some("b24.local"));
    assert_eq!(b.member_id.as_deref(), Some("abc123"));
    assert_eq!((b.timeout, b.users_refresh), (secs(20), secs(60)));
    assert_eq!((b.rate, b.burst), (0.5, 1));
    let c = &cfg.calls;
    assert_eq!(c.system_name, "pbx-1.office_2");
    assert_eq!(c.lines, vec!["+74951234567", "8001231231"]);
    assert_eq!(c.inbound_contexts, vec!["from-trunk-sip"]);
    assert_eq!(c.default_user.as_deref(), Some("219"));
    assert_eq!(c.responsible, Responsible::Static);
    assert_eq!(
        c.static_responsible,
        vec![
            ("8001231231".to_string(), "219".to_string()),
            ("+74951234567".to_string(), "220".to_string())
        ]
    );
    assert!(c.crm_create);
    assert_eq!(c.show_cards_to, vec!["219", "220"]);
    assert!(!c.add_to_chat);
    assert_eq!(c.missed_user, MissedUser::LastRang);
    assert_eq!(
        cfg.phone,
        PhoneConfig {
            country_code: "49".into(),
            national_prefix: "".into(),
            national_length: 11
        }
    );
    assert_eq!(cfg.http.listen, "[::]:9090".parse().unwrap());
    assert_eq!(cfg.http.threads, 64);
    assert_eq!(cfg.state.dir, PathBuf::from("/tmp/callme"));
    assert_eq!(cfg.state.outbox_warn, 50);
}

#[test]
fn typo_key_in_example_points_at_its_line() {
    let text = EXAMPLE.replace("\ndefault_user = 100", "\ndefualt_user = 100");
    let line = line_of(&text, "defualt_user");
    let e = parse_str(&text, "callme.conf.example").unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "callme.conf.example:{line}: unknown key `defualt_user` in [calls], did you mean `default_user`? (allowed keys: system_name, lines,"
        )),
        "{shown}"
    );
    assert_eq!(e.line(), Some(line));
}

#[test]
fn unknown_section() {
    let text = format!("{MINIMAL}[asterix]\nfoo = 1\n");
    let e = err(&text);
    assert_eq!(
        e,
        "t.conf:6: unknown section [asterix], did you mean [asterisk]? \
         (allowed sections: [asterisk], [bitrix24], [calls], [phone], [http], [state], [recording], [originate])"
    );
}

#[test]
fn unknown_key_without_suggestion() {
    let e = err(&with("http", "colour = blue"));
    assert!(
        e.starts_with(
            "t.conf:7: unknown key `colour` in [http] (allowed keys: listen, threads, public_url)"
        ),
        "{e}"
    );
}

#[test]
fn duplicate_key() {
    let e = err(&with("asterisk", "port = 1\nport = 2"));
    assert!(
        e.starts_with("t.conf:3: duplicate key `port` in [asterisk], first set on line 2"),
        "{e}"
    );
}

#[test]
fn duplicate_section() {
    let e = err(&format!("{MINIMAL}[asterisk]\n"));
    assert!(
        e.starts_with("t.conf:6: duplicate section [asterisk]"),
        "{e}"
    );
}

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
fn missing_required_keys() {
    let e = err("[asterisk]\nusername = u\n[bitrix24]\nwebhook_url = https://x/rest/1/c/\n");
    assert_eq!(
        e,
        "t.conf:1: [asterisk] secret is missing (it is required: add `secret = ...` to this section)"
    );
    let e = err("[asterisk]\nusername = u\nsecret = s\n");
    assert_eq!(
        e,
        "t.conf: [bitrix24] webhook_url is missing \
         (it is required: add a [bitrix24] section with `webhook_url = ...`)"
    );
    let e =
        err("[asterisk]\nusername =\nsecret = s\n[bitrix24]\nwebhook_url = https://x/rest/1/c/\n");
    assert_eq!(e, "t.conf:2: [asterisk] username is empty (it is required)");
}

#[test]
fn empty_file_lists_all_required_keys() {
    let e = parse_str("", "t.conf").unwrap_err();
    let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{e}");
    assert!(problems[0].starts_with("t.conf: [asterisk] username is missing"));
    assert!(problems[1].starts_with("t.conf: [asterisk] secret is missing"));
    assert!(problems[2].starts_with("t.conf: [bitrix24] webhook_url is missing"));
}

#[test]
fn all_problems_reported_in_line_order() {
    let text =
        "[calls]\ncrm_create = maybe\n[asterisk]\nport = x\nusername = u\nsecret = s\nhots = y\n";
    let e = parse_str(text, "t.conf").unwrap_err();
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(lines[0].starts_with("t.conf: [bitrix24] webhook_url is missing"));
    assert!(lines[1].starts_with("t.conf:2: [calls] crm_create"));
    assert!(lines[2].starts_with("t.conf:4: [asterisk] port"));
    assert!(
        lines[3].starts_with("t.conf:7: unknown key `hots` in [asterisk], did you mean `host`?")
    );
}

#[test]
fn inline_comments() {
    let text = "[asterisk] ; AMI\nport = 5039 ; not the default\nusername = u # the user\n\
                secret = s3cr3t\t; tab before\n[bitrix24]\n\
                webhook_url = https://p.bitrix24.ru/rest/1/abc   ; trailing slash optional\n";
    let cfg = parse_str(text, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.asterisk.port, 5039);
    assert_eq!(cfg.asterisk.username, "u");
    assert_eq!(cfg.asterisk.secret.expose(), "s3cr3t");
    assert_eq!(
        cfg.bitrix24.webhook_url.as_ref().unwrap().expose(),
        "https://p.bitrix24.ru/rest/1/abc/"
    );
}

#[test]
fn semicolon_without_whitespace_is_data() {
    let text = MINIMAL.replace("secret = s3cr3t", "secret = a;b#c");
    let cfg = parse_str(&text, "t").unwrap();
    assert_eq!(cfg.asterisk.secret.expose(), "a;b#c");
    let text = MINIMAL.replace("secret = s3cr3t", "secret = a ;b");
    let cfg = parse_str(&text, "t").unwrap();
    assert_eq!(cfg.asterisk.secret.expose(), "a");
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
fn webhook_url_redacted() {
    let u = WebhookUrl::parse("https://portal.bitrix24.ru/rest/1/abcdef").unwrap();
    assert_eq!(u.redacted(), "https://portal.bitrix24.ru/rest/1/***/");
    assert_eq!(u.to_string(), "https://portal.bitrix24.ru/rest/1/***/");
    assert_eq!(
        format!("{u:?}"),
        "\"https://portal.bitrix24.ru/rest/1/***/\""
    );
    let u = WebhookUrl::parse("https://p/rest/onlycode/").unwrap();
    assert_eq!(u.redacted(), "https://p/rest/***/");
    // A host called "rest" does not confuse the redaction.
    let u = WebhookUrl::parse("https://rest/rest/1/code/").unwrap();
    assert_eq!(u.redacted(), "https://rest/rest/1/***/");
}

#[test]
fn debug_hides_secrets() {
    let text = with("bitrix24", "app_token = t0k3n-value");
    let cfg = parse_str(&text, "t").unwrap();
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    assert!(!dbg.contains("c0de"), "{dbg}");
    assert!(!dbg.contains("t0k3n-value"), "{dbg}");
    assert!(dbg.contains("https://p.bitrix24.ru/rest/7/***/"), "{dbg}");
    assert!(dbg.contains("secret: \"***\""), "{dbg}");
    let pretty = format!("{cfg:#?}");
    assert!(!pretty.contains("s3cr3t") && !pretty.contains("c0de"));
}

#[test]
fn errors_never_echo_secrets() {
    // A secret with a control character is rejected by the raw parse without being echoed.
    let text = MINIMAL.replace("secret = s3cr3t", "secret = s3cr3t\u{7}");
    let e = err(&text);
    assert!(e.starts_with("t.conf:3: control character"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
}

#[test]
fn secret_type() {
    let s = Secret::new("abc");
    assert_eq!(s.expose(), "abc");
    assert_eq!(s.to_string(), "***");
    assert_eq!(format!("{s:?}"), "\"***\"");
    assert!(s.ct_eq("abc"));
    assert!(!s.ct_eq("abd"));
    assert!(!s.ct_eq("ab"));
    assert!(!s.ct_eq("abcd"));
    assert!(!s.ct_eq(""));
    assert!(Secret::new("").ct_eq(""));
}

#[test]
fn optional_keys_empty_means_none() {
    let text = with("bitrix24", "app_token =\ndomain =\nmember_id =");
    let cfg = parse_str(&text, "t").unwrap();
    assert!(cfg.bitrix24.app_token.is_none());
    assert!(cfg.bitrix24.domain.is_none());
    assert!(cfg.bitrix24.member_id.is_none());
    let cfg = parse_str(&with("calls", "default_user ="), "t").unwrap();
    assert!(cfg.calls.default_user.is_none());
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

#[test]
fn io_error_names_the_file() {
    let e = load(Path::new("/nonexistent/callme.conf")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    let shown = e.to_string();
    assert!(
        shown.starts_with("/nonexistent/callme.conf: cannot read the config file:"),
        "{shown}"
    );
    assert!(shown.contains("callme.conf.example"), "{shown}");
}

#[test]
fn non_utf8_file_points_at_the_line() {
    let dir = std::env::temp_dir().join(format!("callme-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("latin1.conf");
    let mut bytes = MINIMAL.as_bytes().to_vec();
    bytes.extend_from_slice(b"[calls]\nsystem_name = caf\xe9\n");
    std::fs::write(&path, &bytes).unwrap();
    let e = load(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        e.ends_with(":7: the file is not valid UTF-8 (allowed: UTF-8 text; re-save it as UTF-8)"),
        "{e}"
    );
}

#[test]
fn demo_config_is_valid() {
    let cfg = Config::demo();
    assert_eq!(cfg.asterisk.username, "demo");
    assert_eq!(cfg.asterisk.secret.expose(), "demo");
    assert_eq!(
        cfg.bitrix24.webhook_url.as_ref().unwrap().expose(),
        "https://demo.invalid/rest/1/demo/"
    );
    assert_eq!(cfg.calls, CallsConfig::default());
    assert_eq!(cfg.phone, PhoneConfig::default());
    assert!(cfg.state.dir.is_absolute());
}

#[test]
fn suggestions() {
    let keys = ["host", "port", "username", "secret"];
    assert_eq!(suggest("hsot", &keys), Some("host"));
    assert_eq!(suggest("Port", &keys), Some("port"));
    assert_eq!(suggest("user", &keys), None);
    assert_eq!(suggest("secrets", &keys), Some("secret"));
    assert_eq!(suggest("colour", &keys), None);
}

#[test]
fn recording_defaults_and_values() {
    let cfg = parse_str(MINIMAL, "t.conf").unwrap();
    let r = &cfg.recording;
    assert_eq!(r.mode, RecordingMode::Off);
    assert_eq!(r.source, RecordingSource::Both);
    assert_eq!(r.pbx_root, PathBuf::from("/var/spool/asterisk"));
    assert_eq!(r.path_base, PathBuf::from("/var/spool/asterisk"));
    assert_eq!(
        (r.public_url.as_deref(), r.fetch_url.as_deref()),
        (None, None)
    );
    assert_eq!(r.upload_max, 10 * 1024 * 1024);
    assert_eq!(r.wait, Duration::from_secs(120));

    let text = with(
        "recording",
        "mode = URL\nsource = freepbx\npbx_root = /var/spool/asterisk/\n\
         path_base = /mnt/pbx\npublic_url = https://pbx.example.com/rec\n\
         fetch_url = http://10.0.0.5/rec/\nupload_max = 0.5\nwait = 2.5",
    );
    let r = parse_str(&text, "t.conf").unwrap().recording;
    assert_eq!(r.mode, RecordingMode::Url);
    assert_eq!(r.source, RecordingSource::Freepbx);
    assert_eq!(r.pbx_root, PathBuf::from("/var/spool/asterisk"));
    assert_eq!(r.path_base, PathBuf::from("/mnt/pbx"));
    assert_eq!(
        r.public_url.as_deref(),
        Some("https://pbx.example.com/rec/")
    );
    assert_eq!(r.fetch_url.as_deref(), Some("http://10.0.0.5/rec/"));
    assert_eq!(r.upload_max, 512 * 1024);
    assert_eq!(r.wait, Duration::from_millis(2500));
}

#[test]
fn recording_source_maps_to_tracker_variables() {
    assert_eq!(RecordingSource::Callme.vars(), vec!["CallMeFULLFNAME"]);
    assert_eq!(RecordingSource::Freepbx.vars(), vec!["MIXMONITOR_FILENAME"]);
    assert_eq!(
        RecordingSource::Both.vars(),
        vec!["CallMeFULLFNAME", "MIXMONITOR_FILENAME"]
    );
}

#[test]
fn originate_defaults_and_values() {
    let cfg = parse_str(MINIMAL, "t.conf").unwrap();
    assert_eq!(cfg.originate, OriginateConfig::default());
    assert_eq!(cfg.originate.channel, "Local/{inner}@from-internal");
    assert_eq!(cfg.originate.timeout, Duration::from_secs(30));
    let example = parse_str(EXAMPLE, "callme.conf.example").unwrap();
    assert_eq!(example.originate, OriginateConfig::default());

    let text = with(
        "originate",
        "channel = PJSIP/{inner}\ncontext = outbound-allroutes\ntimeout = 45\n\
         caller_id = \"CRM\" <{number}> {inner}\ndial_national = no\ndial_prefix = 9\n\
         callback_targets = 7:219, 8001231231:400",
    );
    let o = parse_str(&text, "t.conf").unwrap().originate;
    assert_eq!(
        o,
        OriginateConfig {
            channel: "PJSIP/{inner}".into(),
            context: "outbound-allroutes".into(),
            timeout: Duration::from_secs(45),
            caller_id: "\"CRM\" <{number}> {inner}".into(),
            dial_national: false,
            dial_prefix: "9".into(),
            callback_targets: vec![
                ("7".into(), "219".into()),
                ("8001231231".into(), "400".into())
            ],
        }
    );
    for bad in [
        "callback_targets = 7",
        "callback_targets = 7:abc",
        "callback_targets = 7:219, 7:220",
        "callback_targets = a b:219",
    ] {
        assert!(
            parse_str(&with("originate", bad), "t.conf").is_err(),
            "{bad} must be refused"
        );
    }
}

#[test]
fn recording_values_checked() {
    for (line, what) in [
        ("mode = ftp", "allowed: off, url, upload"),
        ("source = asterisk", "allowed: callme, freepbx, both"),
        ("pbx_root = spool", "not an absolute directory"),
        ("path_base = /mnt/../etc", "not an absolute directory"),
        (
            "public_url = pbx.example.com/rec",
            "must start with https://",
        ),
        ("fetch_url = http://u:pw@pbx/rec", "user:password@"),
        ("fetch_url = http:///rec", "no host name"),
        ("upload_max = 0", "not a size in megabytes"),
        ("upload_max = 2048", "not a size in megabytes"),
        ("upload_max = 1.5MB", "not a size in megabytes"),
        ("wait = 0", "not a number of seconds"),
    ] {
        let text = with("recording", line);
        let e = err(&text);
        assert!(e.contains(what), "{line}: {e}");
        let at = line_of(&text, line.split(' ').next().unwrap());
        assert!(e.starts_with(&format!("t.conf:{at}: ")), "{line}: {e}");
    }
    let e = err(&with("recording", "mode = url"));
    assert!(e.contains("mode = url needs public_url"), "{e}");
    assert!(parse_str(&with("recording", "mode = upload"), "t").is_ok());
}

#[test]
fn originate_values_checked() {
    for (line, why) in [
        (
            "channel = Local/219@from-internal",
            "does not contain {inner}",
        ),
        ("channel = {inner}", "is not TECH/DATA"),
        (
            "channel = Local/{inner},x",
            "characters a channel name cannot have",
        ),
        (
            "channel = Local/{inner} @x",
            "characters a channel name cannot have",
        ),
        ("channel = PJSIP/{number}", "unknown placeholder {number}"),
        ("channel = PJSIP/{inner", "without `}`"),
        ("context = from internal", "not a dialplan context"),
        ("timeout = 0", "not a number of seconds"),
        ("caller_id = {name}", "unknown placeholder {name}"),
        ("dial_national = maybe", "not a yes/no value"),
        ("dial_prefix = 9a", "not a dial prefix"),
        ("dial_prefix = 12345", "not a dial prefix"),
    ] {
        let e = err(&with("originate", line));
        assert!(e.starts_with("t.conf:7: [originate] "), "{line}: {e}");
        assert!(e.contains(why), "{line}: {e}");
    }
}

#[test]
fn webhook_is_the_default_auth() {
    let cfg = parse_str(MINIMAL, "t").unwrap();
    assert_eq!(cfg.bitrix24.auth, AuthMode::Webhook);
    assert!(cfg.bitrix24.app.is_none());
    assert!(cfg.http.public_url.is_none());
}

#[test]
fn app_mode_keys() {
    let text = "[asterisk]\nusername = u\nsecret = s\n[bitrix24]\nauth = app\n\
                client_id = local.5f1a.123\nclient_secret = topsecret\nportal = p.bitrix24.ru\n\
                [http]\npublic_url = https://pbx.example.com/callme\n";
    let cfg = parse_str(text, "t").unwrap();
    assert_eq!(cfg.bitrix24.auth, AuthMode::App);
    assert!(cfg.bitrix24.webhook_url.is_none());
    let app = cfg.bitrix24.app.as_ref().unwrap();
    assert_eq!(app.client_id, "local.5f1a.123");
    assert_eq!(app.portal, "p.bitrix24.ru");
    assert_eq!(app.oauth_url, DEFAULT_OAUTH_URL);
    assert!(!format!("{cfg:?}").contains("topsecret"));
    assert_eq!(
        cfg.http.public_url.as_deref(),
        Some("https://pbx.example.com/callme/")
    );
    // Missing app keys are all reported; the secret is never repeated.
    let e = err(
        "[asterisk]\nusername = u\nsecret = s\n[bitrix24]\nauth = app\nclient_secret = topsecret\n",
    );
    assert!(e.contains("[bitrix24] client_id is missing"), "{e}");
    assert!(e.contains("[bitrix24] portal is missing"), "{e}");
    assert!(!e.contains("webhook_url"), "{e}");
    let e = err("[asterisk]\nusername = u\nsecret = s\n[bitrix24]\nauth = oauth\n");
    assert!(e.contains("unknown mode (allowed: webhook, app)"), "{e}");
}

#[test]
fn app_keys_rejected_in_webhook_mode() {
    let e = err(&with(
        "bitrix24",
        "client_id = local.1\nclient_secret = topsecret",
    ));
    assert!(e.contains("client_id is only used with auth = app"), "{e}");
    assert!(
        e.contains("client_secret is only used with auth = app"),
        "{e}"
    );
    assert!(!e.contains("topsecret"), "{e}");
}
