//! [recording], [originate] and app mode (`auth = app`).

use super::*;

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
            policy: crate::dial_policy::DialPolicy::defaults(&PhoneConfig::default(), false, "9"),
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
fn app_mode_endpoint_and_pins() {
    let base = "[asterisk]\nusername = u\nsecret = s\n[bitrix24]\nauth = app\n\
                client_id = local.5f1a.123\nclient_secret = topsecret\n";
    let cfg = parse_str(&format!("{base}portal = P.Bitrix24.ru\n"), "t").unwrap();
    let app = cfg.bitrix24.app.as_ref().unwrap();
    assert_eq!(app.endpoint(), "https://p.bitrix24.ru/rest/");
    assert_eq!(app.member_id, None);
    assert!(!app.insecure_http);
    // A self-hosted portal on its own port; plain http only when asked for; member_id pins.
    let cfg = parse_str(
        &format!("{base}portal = b24.example.com:8443\nmember_id = a223c6\ninsecure_http = yes\n"),
        "t",
    )
    .unwrap();
    let app = cfg.bitrix24.app.as_ref().unwrap();
    assert_eq!(app.endpoint(), "http://b24.example.com:8443/rest/");
    assert_eq!(app.member_id.as_deref(), Some("a223c6"));
    assert_eq!(cfg.bitrix24.member_id.as_deref(), Some("a223c6"));
    for bad in [
        "https://p.bitrix24.ru",
        "p.bitrix24.ru:0",
        "p.bitrix24.ru:x",
        "p.bitrix24.ru/rest",
    ] {
        let e = err(&format!("{base}portal = {bad}\n"));
        assert!(e.contains("not a portal"), "{bad}: {e}");
    }
    // insecure_http is an app-mode key.
    let e = err("[asterisk]\nusername = u\nsecret = s\n[bitrix24]\n\
         webhook_url = https://p.bitrix24.ru/rest/1/abc/\ninsecure_http = yes\n");
    assert!(
        e.contains("insecure_http is only used with auth = app"),
        "{e}"
    );
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

#[test]
fn originate_policy_keys() {
    // Defaults follow [phone], dial_national and dial_prefix.
    let o = parse_str(MINIMAL, "t.conf").unwrap().originate;
    assert_eq!(o.policy.check("89991234567"), Ok(()));
    assert!(o.policy.check("88091234567").is_err());
    assert_eq!(o.policy.max_per_user_per_minute, 10);
    assert_eq!(o.policy.max_per_minute, 60);
    let de = with("phone", "country_code = 49\nnational_prefix = 0");
    let o = parse_str(&de, "t.conf").unwrap().originate;
    assert_eq!(o.policy.check("03012345678"), Ok(()));
    assert!(o.policy.check("89991234567").is_err());
    // Set explicitly; empty means the default.
    let text = with(
        "originate",
        "allow = _8XXXXXXXXXX, _2XX\ndeny =\nmax_per_user_per_minute = 3\nmax_per_minute = 7",
    );
    let p = parse_str(&text, "t.conf").unwrap().originate.policy;
    assert_eq!(p.check("219"), Ok(()));
    assert!(p.check("88091234567").is_err(), "default deny kept");
    assert_eq!((p.max_per_user_per_minute, p.max_per_minute), (3, 7));
    // Bad values point at their line.
    for (line, why) in [
        ("allow = _8X.X", "only at the end"),
        ("deny = +7809", "digits only"),
        ("allow = _8[9-1]X", "[set]"),
        ("max_per_minute = 0", "max_per_minute"),
        ("max_per_user_per_minute = many", "max_per_user_per_minute"),
    ] {
        let text = with("originate", line);
        let e = err(&text);
        let want = format!("t.conf:{}: [originate] ", line_of(&text, line));
        assert!(e.starts_with(&want), "{line}: {e}");
        assert!(e.contains(why), "{line}: {e}");
    }
}
