//! Structural checks of `contrib/b24_continuous_parallel.conf` (and the AMI user), since no
//! Asterisk runs in CI: the shape Asterisk's config parser needs, every jump landing in a
//! context that exists, the Asterisk 11-only `AUDIOHOOK_INHERIT` behind its version guard, and
//! the contract with the daemon (the variables it reads, one MixMonitor, lame -b 64).

use std::collections::BTreeMap;
use std::path::Path;

/// Contexts of FreePBX or Asterisk the module may jump to: only FreePBX's own recording
/// check, from the FreePBX hook that FreePBX itself calls (tests/freepbx_dialplan.rs). The
/// module proper (`callme-rec*`) jumps only inside the file, so it works on plain Asterisk.
const KNOWN_EXTERNAL: &[&str] = &["sub-record-check"];

fn read(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("contrib/{name}: {e}"))
}

/// The text before an unescaped `;` (Asterisk's comment character), trimmed.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    let end = (0..b.len())
        .find(|&i| b[i] == b';' && (i == 0 || b[i - 1] != b'\\'))
        .unwrap_or(b.len());
    line[..end].trim()
}

/// Contexts in file order: name → (line number, body lines (number, text)).
type Contexts = Vec<(String, usize, Vec<(usize, String)>)>;

fn contexts(text: &str) -> Contexts {
    let mut out: Contexts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = strip_comment(raw);
        if line.is_empty() || line.starts_with("#include") {
            continue;
        }
        if line.starts_with('[') {
            let close = line
                .find(']')
                .unwrap_or_else(|| panic!("line {n}: unbalanced context header {line:?}"));
            let name = &line[1..close];
            let rest = &line[close + 1..];
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                "line {n}: bad context name {name:?}"
            );
            assert!(
                rest.is_empty() || rest == "(+)",
                "line {n}: text after the context header: {rest:?}"
            );
            assert!(
                out.iter().all(|(c, _, _)| c != name),
                "line {n}: context [{name}] defined twice"
            );
            out.push((name.to_string(), n, Vec::new()));
            continue;
        }
        let Some((_, _, body)) = out.last_mut() else {
            panic!("line {n}: {line:?} outside any context");
        };
        let ok = ["exten =>", "same =>", "include =>"]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(ok, "line {n}: not exten/same/include: {line:?}");
        body.push((n, line.to_string()));
    }
    out
}

/// The arguments of the first `app(` call in `s`, split on top-level commas.
fn args_of<'a>(s: &'a str, app: &str) -> Option<Vec<&'a str>> {
    let start = s.find(&format!("{app}("))? + app.len() + 1;
    let (mut depth, mut parts, mut from) = (0i32, Vec::new(), start);
    for (i, c) in s[start..].char_indices() {
        let at = start + i;
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' if depth == 0 => {
                parts.push(&s[from..at]);
                return Some(parts);
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    None
}

/// Every dialplan location `ctx,ext,prio` a line jumps to: Gosub/Goto, the branches of
/// GotoIf/GosubIf/ExecIf, and hangup handlers. Labels alone (`known`) stay in the context.
fn jump_targets(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut context_of = |dest: &str| {
        let parts: Vec<&str> = dest.split(',').map(str::trim).collect();
        if parts.len() >= 3 {
            found.push(parts[0].to_string());
        }
    };
    for app in ["Gosub", "Goto"] {
        // `Gosub(` but not `GosubIf(`.
        if let Some(args) = args_of(line, app) {
            context_of(&args.join(","));
        }
    }
    for app in ["GotoIf", "GosubIf"] {
        if let Some(args) = args_of(line, app) {
            let all = args.join(",");
            if let Some((_, branches)) = all.rsplit_once('?') {
                for b in branches.split(':') {
                    context_of(b);
                }
            }
        }
    }
    if let Some((_, dest)) = line.split_once("hangup_handler_push)=") {
        context_of(dest.trim_end_matches(')'));
    }
    found
}

#[test]
fn dialplan_is_well_formed_and_every_jump_lands() {
    let text = read("b24_continuous_parallel.conf");
    let ctx = contexts(&text);
    let names: Vec<&str> = ctx.iter().map(|(c, _, _)| c.as_str()).collect();
    for must in [
        "sub-record-check-custom",
        "callme-rec",
        "callme-rec-inherit",
        "callme-rec-hangup",
    ] {
        assert!(names.contains(&must), "[{must}] missing: {names:?}");
    }
    let mut jumps = 0;
    for (name, at, body) in &ctx {
        assert!(!body.is_empty(), "[{name}] (line {at}) is empty");
        for (n, line) in body {
            for target in jump_targets(line) {
                jumps += 1;
                assert!(
                    names.contains(&target.as_str()) || KNOWN_EXTERNAL.contains(&target.as_str()),
                    "line {n}: jump to unknown context {target:?}"
                );
            }
        }
        // Every entry returns to the caller: the module never changes routing. FreePBX 16
        // calls its `macro-` hooks with Macro(), which ends with MacroExit().
        let (n, last) = body.last().unwrap();
        let exit = if name.starts_with("macro-") {
            "MacroExit()"
        } else {
            "Return()"
        };
        assert!(
            last.contains(exit),
            "[{name}] line {n}: must end with {exit}, ends with {last:?}"
        );
        assert!(
            body.iter()
                .all(|(_, l)| !l.contains("Hangup(") && !l.contains("Dial(")),
            "[{name}] must not dial or hang up"
        );
    }
    assert!(jumps >= 3, "the jump parser found only {jumps} jumps");
}

#[test]
fn jump_parser_sees_contexts() {
    assert_eq!(jump_targets("same => n,Gosub(a-b,s,1)"), vec!["a-b"]);
    assert_eq!(jump_targets("same => n,Gosub(x,s,1(${y}))"), vec!["x"]);
    assert_eq!(
        jump_targets("same => n,GotoIf($[${a} > 1]?c1,s,1:c2,s,2)"),
        vec!["c1", "c2"]
    );
    assert!(jump_targets("same => n,GotoIf($[\"${x}\" != \"\"]?known)").is_empty());
    assert_eq!(
        jump_targets("same => n,Set(CHANNEL(hangup_handler_push)=h,s,1(${k}))"),
        vec!["h"]
    );
}

#[test]
fn audiohook_inherit_only_behind_the_version_guard() {
    let text = read("b24_continuous_parallel.conf");
    let mut seen = 0;
    for (name, _, body) in contexts(&text) {
        for (i, (n, line)) in body.iter().enumerate() {
            if !line.contains("AUDIOHOOK_INHERIT") {
                continue;
            }
            seen += 1;
            // The guard: an earlier line of the same context jumps past it on 12+.
            let guard = body[..i].iter().rev().find_map(|(_, l)| {
                let args = args_of(l, "GotoIf")?;
                let all = args.join(",");
                let (cond, label) = all.rsplit_once('?')?;
                let cond = cond.replace(' ', "");
                cond.contains(">=12]").then(|| label.trim().to_string())
            });
            let Some(label) = guard else {
                panic!("[{name}] line {n}: AUDIOHOOK_INHERIT without a preceding version guard");
            };
            assert!(
                !label.contains(','),
                "the guard must jump to a label of [{name}], not elsewhere"
            );
            let label_line = body[i + 1..]
                .iter()
                .find(|(_, l)| l.contains(&format!("n({label})")))
                .unwrap_or_else(|| panic!("[{name}]: label {label} after line {n} not found"));
            // Nothing but the inherit between the guard and its label.
            let between = body
                .iter()
                .filter(|(m, _)| *m > body[i - 1].0 && *m < label_line.0)
                .count();
            assert_eq!(
                between, 1,
                "[{name}]: only AUDIOHOOK_INHERIT may be guarded"
            );
            // Asterisk's version, never a variable a caller could set.
            assert!(
                body[..i].iter().any(|(_, l)| l.contains("${VERSION()}")),
                "[{name}]: the guard must look at ${{VERSION()}}"
            );
        }
    }
    assert_eq!(seen, 1, "AUDIOHOOK_INHERIT is set in one place");
}

#[test]
fn dialplan_keeps_the_contract_with_the_daemon() {
    let text = read("b24_continuous_parallel.conf");
    let lines: Vec<String> = text
        .lines()
        .map(strip_comment)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("Set(CallMeLINKEDID=${CHANNEL(linkedid)})"));
    assert!(has("Set(CallMeFULLFNAME=${GLOBAL(${key})})"));
    assert!(
        has("Set(GLOBAL(${key})=${base}.mp3)"),
        "CallMeFULLFNAME names the MP3"
    );
    assert!(has("/var/spool/asterisk/continuous"));
    assert!(has(
        "${STRFTIME(${EPOCH},,%Y/%m/%d)}/call-${CallMeLINKEDID}"
    ));
    // The default directory is set only if the admin did not set one.
    assert!(has(
        "ExecIf($[\"${CALLME_REC_DIR}\" = \"\"]?Set(GLOBAL(CALLME_REC_DIR)="
    ));

    let mixmon: Vec<&String> = lines.iter().filter(|l| l.contains("MixMonitor(")).collect();
    assert_eq!(mixmon.len(), 1, "one MixMonitor: {mixmon:?}");
    let args = args_of(mixmon[0], "MixMonitor").unwrap();
    assert_eq!(args.len(), 3, "file, options, post-command: {args:?}");
    assert_eq!(args[0], "${base}.wav");
    assert!(args[1].contains('b'), "records the bridged call only");
    let cmd = args[2];
    assert!(cmd.contains("lame -b 64"), "{cmd}");
    assert!(
        !cmd.contains('"'),
        "quotes are eaten by the app argument parser: {cmd}"
    );
    // The WAV goes only after lame succeeded and wrote a non-empty MP3.
    let rm = cmd.find("rm -f ${base}.wav").expect("removes the WAV");
    let lame = cmd.find("lame").unwrap();
    let test = cmd
        .find("&& test -s ${base}.mp3 &&")
        .expect("checks the MP3");
    assert!(lame < test && test < rm, "{cmd}");
    // Started once per linkedid: the marker is checked before MixMonitor and set after.
    let pos = |s: &str| lines.iter().position(|l| l.contains(s)).unwrap();
    assert!(pos("GotoIf($[\"${GLOBAL(${key})}\" != \"\"]?known)") < pos("MixMonitor("));
    assert!(pos("hangup_handler_push") < pos("MixMonitor("));
    assert!(pos("MixMonitor(") < pos("n(known)"));
}

#[test]
fn ami_user_has_the_minimum_classes() {
    let text = read("manager_custom.conf");
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(strip_comment).filter(|l| !l.is_empty()) {
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']').to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        keys.entry(format!("{section}.{}", k.trim()))
            .or_default()
            .push(v.trim().to_string());
    }
    let one = |k: &str| keys.get(k).map(|v| v.join("|")).unwrap_or_default();
    assert_eq!(one("callme.read"), "system,call,dialplan,agent");
    assert_eq!(one("callme.write"), "originate,call,reporting");
    assert_eq!(one("callme.deny"), "0.0.0.0/0.0.0.0");
    assert_eq!(one("callme.permit"), "127.0.0.1/255.255.255.255");
    assert!(!one("callme.writetimeout").is_empty());
    assert!(!one("callme.secret").is_empty());
}

#[test]
fn readme_names_the_supported_versions() {
    let text = read("README.md");
    assert!(text.contains("Asterisk 13+") && text.contains("FreePBX 16/17"));
    assert!(text.contains("dialplan show callme-rec"));
    assert!(text.contains("Gosub(callme-rec,s,1)"));
}
