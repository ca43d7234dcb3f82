//! How problems are reported: unknown names, duplicates, required keys, line order.

use super::*;

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
            "t.conf:7: unknown key `colour` in [http] (allowed keys: listen, ops_listen, ops_token, threads, public_url, max_connections, idle_timeout, request_timeout)"
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
fn optional_keys_empty_means_none() {
    let text = with("bitrix24", "app_token =\ndomain =\nmember_id =");
    let cfg = parse_str(&text, "t").unwrap();
    assert!(cfg.bitrix24.app_token.is_none());
    assert!(cfg.bitrix24.domain.is_none());
    assert!(cfg.bitrix24.member_id.is_none());
    let cfg = parse_str(&with("calls", "default_user ="), "t").unwrap();
    assert!(cfg.calls.default_user.is_none());
}
