//! Loading and the whole result: the example, defaults, every value read, comments, I/O, secrets in Debug.

use super::*;

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
    assert_eq!(cfg.http.ops_listen, Some("127.0.0.1:8081".parse().unwrap()));
    assert!(cfg.http.ops_token.is_none());
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
ops_listen =
ops_token = 0123456789abcdef0123
threads = 64
max_connections = 100
idle_timeout = 2.5
request_timeout = 30
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
    assert_eq!(cfg.http.ops_listen, None);
    assert_eq!(
        cfg.http.ops_token.as_ref().map(|t| t.expose()),
        Some("0123456789abcdef0123")
    );
    assert_eq!(cfg.http.threads, 64);
    assert_eq!(cfg.http.max_connections, 100);
    assert_eq!(cfg.http.idle_timeout, Duration::from_millis(2500));
    assert_eq!(cfg.http.request_timeout, secs(30));
    assert_eq!(cfg.state.dir, PathBuf::from("/tmp/callme"));
    assert_eq!(cfg.state.outbox_warn, 50);
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
