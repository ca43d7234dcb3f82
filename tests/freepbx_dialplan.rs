//! The FreePBX hooks of `contrib/b24_continuous_parallel.conf`, checked against dialplan
//! excerpts shaped like FreePBX's generated `extensions_additional.conf`
//! (`tests/fixtures/freepbx/`: `recording.conf` plus `core-16.conf` or `core-17.conf`; their
//! headers name the FreePBX source each context is modelled on).
//!
//! No Asterisk runs here, so the test loads the files the way Asterisk's pbx_config does
//! (`extensions.conf` includes `extensions_additional.conf` first, then
//! `extensions_custom.conf`, which includes our module; a second `exten,priority` for the same
//! context is refused, the first one stays) and looks extensions up the way `pbx_find_extension`
//! does: a context's own extensions first, its `include`s, in order, only for what it lacks.
//! That is the rule that decides whether a hook ever runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One priority of one extension.
#[derive(Debug, Clone)]
struct Prio {
    prio: u32,
    label: Option<String>,
    app: String,
}

#[derive(Debug, Default, Clone)]
struct Context {
    /// In file order. `first_is_include` records whether the context's first line was one.
    includes: Vec<String>,
    first_is_include: bool,
    /// Extension name → priorities in order.
    exts: BTreeMap<String, Vec<Prio>>,
}

#[derive(Debug, Default, Clone)]
struct Dialplan {
    contexts: BTreeMap<String, Context>,
    /// `file:line` of every priority Asterisk would refuse as already defined.
    refused: Vec<String>,
}

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The text before an unescaped `;`, trimmed.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    let end = (0..b.len())
        .find(|&i| b[i] == b';' && (i == 0 || b[i - 1] != b'\\'))
        .unwrap_or(b.len());
    line[..end].trim()
}

impl Dialplan {
    /// Load one file on top of what is loaded, as pbx_config does.
    fn load(&mut self, file: &str, text: &str) {
        let mut ctx: Option<String> = None;
        let mut last_exten: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{file}:{}", i + 1);
            let line = strip_comment(raw);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest.split(']').next().expect("context name").to_string();
                let fresh = !self.contexts.contains_key(&name);
                let c = self.contexts.entry(name.clone()).or_default();
                if fresh {
                    c.first_is_include = false;
                }
                ctx = Some(name);
                last_exten = None;
                continue;
            }
            let name = ctx
                .clone()
                .unwrap_or_else(|| panic!("{at}: outside a context"));
            let c = self.contexts.get_mut(&name).unwrap();
            if let Some(inc) = line.strip_prefix("include =>") {
                if c.includes.is_empty() && c.exts.is_empty() {
                    c.first_is_include = true;
                }
                c.includes.push(inc.trim().to_string());
                continue;
            }
            let (exten, rest) = if let Some(rest) = line.strip_prefix("exten =>") {
                let (e, r) = rest.trim().split_once(',').expect("exten,prio,app");
                (e.trim().to_string(), r)
            } else if let Some(rest) = line.strip_prefix("same =>") {
                let e = last_exten
                    .clone()
                    .unwrap_or_else(|| panic!("{at}: same without exten"));
                (e, rest.trim())
            } else {
                panic!("{at}: not include/exten/same: {line:?}");
            };
            let (p, app) = rest.split_once(',').expect("prio,app");
            let p = p.trim();
            let prev = c
                .exts
                .get(&exten)
                .and_then(|v| v.last())
                .map_or(0, |p| p.prio);
            let (prio, label) = match p.split_once('(') {
                Some((n, l)) => (n, Some(l.trim_end_matches(')').to_string())),
                None => (p, None),
            };
            let prio = if prio == "n" {
                prev + 1
            } else {
                prio.parse()
                    .unwrap_or_else(|_| panic!("{at}: priority {p:?}"))
            };
            last_exten = Some(exten.clone());
            let list = c.exts.entry(exten).or_default();
            if list.iter().any(|x| x.prio == prio) {
                self.refused.push(at);
                continue;
            }
            list.push(Prio {
                prio,
                label,
                app: app.trim().to_string(),
            });
        }
    }

    /// FreePBX (`recording.conf` + `core-<v>.conf`), then, if `with_module`, our file.
    fn freepbx(version: u32, with_module: bool) -> Dialplan {
        let mut d = Dialplan::default();
        for f in [
            "tests/fixtures/freepbx/recording.conf".to_string(),
            format!("tests/fixtures/freepbx/core-{version}.conf"),
        ] {
            d.load(&f, &read(&f));
        }
        if with_module {
            let f = "contrib/b24_continuous_parallel.conf";
            d.load(f, &read(f));
        }
        d
    }

    /// Where Asterisk finds `exten` priority 1 when asked for it in `ctx`: the context itself
    /// if it has it, else the first include (depth first, in order) that does.
    fn find(&self, ctx: &str, exten: &str) -> Option<String> {
        self.find_in(ctx, exten, &mut BTreeSet::new())
    }

    fn find_in(&self, ctx: &str, exten: &str, seen: &mut BTreeSet<String>) -> Option<String> {
        if !seen.insert(ctx.to_string()) {
            return None;
        }
        let c = self.contexts.get(ctx)?;
        let own = c
            .exts
            .iter()
            .any(|(name, prios)| matches(name, exten) && prios.iter().any(|p| p.prio == 1));
        if own {
            return Some(ctx.to_string());
        }
        c.includes
            .iter()
            .find_map(|inc| self.find_in(inc, exten, seen))
    }

    /// The priorities of `exten` in the context Asterisk would find it in.
    fn body(&self, ctx: &str, exten: &str) -> Vec<Prio> {
        let at = self.find(ctx, exten).expect("found");
        self.contexts[&at].exts[exten].clone()
    }

    /// Every application line of the loaded FreePBX files (for call-site searches).
    fn apps(&self) -> Vec<String> {
        self.contexts
            .values()
            .flat_map(|c| c.exts.values().flatten().map(|p| p.app.clone()))
            .collect()
    }
}

/// Asterisk's extension match, for the few forms the fixtures use: literal names and `_`
/// patterns with X, Z, N and a trailing `.`.
fn matches(pattern: &str, exten: &str) -> bool {
    let Some(p) = pattern.strip_prefix('_') else {
        return pattern == exten;
    };
    let mut e = exten.chars();
    for pc in p.chars() {
        if pc == '.' {
            return e.next().is_some();
        }
        let Some(c) = e.next() else { return false };
        let ok = match pc {
            'X' => c.is_ascii_digit(),
            'Z' => ('1'..='9').contains(&c),
            'N' => ('2'..='9').contains(&c),
            lit => lit == c,
        };
        if !ok {
            return false;
        }
    }
    e.next().is_none()
}

/// The first argument list of `app(` in `s`, as one string.
fn args<'a>(s: &'a str, app: &str) -> Option<&'a str> {
    let start = s.find(&format!("{app}("))? + app.len() + 1;
    let mut depth = 0;
    for (i, c) in s[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(&s[start..start + i]),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The recording types FreePBX passes to `Gosub(sub-record-check,s,1(<type>,...))`.
fn record_check_types(d: &Dialplan) -> BTreeSet<String> {
    d.apps()
        .iter()
        .filter_map(|a| a.strip_prefix("Gosub(sub-record-check,s,1("))
        .map(|rest| rest.split(',').next().unwrap().to_string())
        .collect()
}

/// The pre-dial hook contexts FreePBX calls: (context, called with Macro).
fn predial_hooks(d: &Dialplan) -> BTreeSet<(String, bool)> {
    let mut out = BTreeSet::new();
    for a in d.apps() {
        if let Some(m) = args(&a, "Macro") {
            let name = m.split(',').next().unwrap();
            if name.ends_with("-predial-hook") {
                out.insert((format!("macro-{name}"), true));
            }
        }
        if let Some(g) = args(&a, "Gosub") {
            let name = g.split(',').next().unwrap();
            if name.ends_with("-predial-hook") {
                out.insert((name.to_string(), false));
            }
        }
    }
    out
}

#[test]
fn fixtures_have_freepbxs_layout() {
    for v in [16, 17] {
        let d = Dialplan::freepbx(v, false);
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        // framework's generateConf(): `include => <name>-custom` is each context's first line.
        for (name, c) in &d.contexts {
            assert!(
                c.first_is_include,
                "[{name}] does not start with an include"
            );
            assert_eq!(
                c.includes.first(),
                Some(&format!("{name}-custom")),
                "[{name}]"
            );
        }
        let s = &d.contexts["sub-record-check"].exts["s"];
        let checkaction = s
            .iter()
            .find(|p| p.label.as_deref() == Some("checkaction"))
            .expect("checkaction");
        assert_eq!(
            checkaction.app,
            "GotoIf($[${DIALPLAN_EXISTS(sub-record-check,${ARG1})}]?sub-record-check,${ARG1},1)"
        );
        assert!(
            s.iter()
                .any(|p| p.app == "Gosub(recordcheck,1(${ARG3},${ARG1},${ARG2}))"),
            "the generic check"
        );
        // The types FreePBX passes; the ones [sub-record-check] handles itself.
        assert_eq!(
            record_check_types(&d),
            ["in", "out", "q", "rg"].map(String::from).into()
        );
        for own in ["in", "out", "exten", "recordcheck"] {
            assert!(
                d.contexts["sub-record-check"].exts.contains_key(own),
                "{own}"
            );
        }
        // Nothing in FreePBX's generated dialplan defines the hooks: they are only called.
        for (hook, _) in predial_hooks(&d) {
            assert!(!d.contexts.contains_key(&hook), "{hook} is generated");
        }
    }
}

/// The predecessor's hook, `exten => s,1,...` in [sub-record-check-custom], is shadowed by
/// [sub-record-check]'s own `s`: FreePBX's `Gosub(sub-record-check,s,1(...))` never gets there.
#[test]
fn an_s_extension_in_sub_record_check_custom_never_runs() {
    let mut d = Dialplan::freepbx(17, false);
    d.load(
        "predecessor",
        "[sub-record-check-custom]\nexten => s,1,Gosub(callme-rec,s,1)\n same => n,Return()\n",
    );
    assert_eq!(
        d.find("sub-record-check", "s").as_deref(),
        Some("sub-record-check")
    );
    // Reachable only when asked for directly, which FreePBX never does.
    assert_eq!(
        d.find("sub-record-check-custom", "s").as_deref(),
        Some("sub-record-check-custom")
    );
    // So ours has no `s` there.
    let ours = Dialplan::freepbx(17, true);
    assert!(!ours.contexts["sub-record-check-custom"]
        .exts
        .contains_key("s"));
}

/// [sub-record-check] jumps to a handler named after the type when DIALPLAN_EXISTS finds one,
/// includes counted. It has none for ring groups and queues, so ours in
/// [sub-record-check-custom] runs there, and must then do what FreePBX's generic check does.
#[test]
fn ring_groups_and_queues_reach_the_module_through_dialplan_exists() {
    for v in [16, 17] {
        let bare = Dialplan::freepbx(v, false);
        let d = Dialplan::freepbx(v, true);
        assert!(d.refused.is_empty(), "FreePBX {v}: refused {:?}", d.refused);
        let generic = bare.contexts["sub-record-check"].exts["s"]
            .iter()
            .find_map(|p| args(&p.app, "Gosub").filter(|a| a.starts_with("recordcheck,")))
            .expect("generic check")
            .trim_start_matches("recordcheck,1")
            .to_string();
        let mut reached = BTreeSet::new();
        for t in record_check_types(&d) {
            match bare.find("sub-record-check", &t) {
                Some(ctx) => {
                    // FreePBX handles it: a handler of ours would be dead code.
                    assert_eq!(ctx, "sub-record-check");
                    assert_eq!(d.find("sub-record-check", &t), Some(ctx), "{t}");
                }
                None => {
                    let at = d.find("sub-record-check", &t);
                    assert_eq!(
                        at.as_deref(),
                        Some("sub-record-check-custom"),
                        "FreePBX {v}: type {t} reaches no handler of ours"
                    );
                    let body = d.body("sub-record-check", &t);
                    assert_eq!(body[0].app, "Gosub(callme-rec,s,1)", "{t}");
                    assert_eq!(
                        body[1].app,
                        format!("Gosub(sub-record-check,recordcheck,1{generic})"),
                        "{t}: FreePBX's generic check, same arguments"
                    );
                    assert_eq!(body.last().unwrap().app, "Return()", "{t}");
                    assert_eq!(body.len(), 3, "{t}: {body:?}");
                    assert_eq!(
                        d.find("sub-record-check", "recordcheck").as_deref(),
                        Some("sub-record-check")
                    );
                    reached.insert(t);
                }
            }
        }
        assert_eq!(reached, ["q", "rg"].map(String::from).into());
        // No other extension in our custom context: each one is reached.
        let ours: BTreeSet<String> = d.contexts["sub-record-check-custom"]
            .exts
            .keys()
            .cloned()
            .collect();
        assert_eq!(ours, reached, "FreePBX {v}");
    }
}

/// Every pre-dial hook FreePBX 16 or 17 calls exists in the module, starts the recording
/// module and returns the way its caller needs (Macro → MacroExit, Gosub → Return); the module
/// defines no hook that neither calls.
#[test]
fn every_predial_hook_freepbx_calls_runs_the_module() {
    let mut called = BTreeSet::new();
    for v in [16, 17] {
        let d = Dialplan::freepbx(v, true);
        let hooks = predial_hooks(&d);
        assert!(hooks.len() >= 4, "FreePBX {v}: {hooks:?}");
        for (hook, by_macro) in &hooks {
            let c = d
                .contexts
                .get(hook)
                .unwrap_or_else(|| panic!("FreePBX {v} calls [{hook}], the module lacks it"));
            let s = &c.exts["s"];
            assert_eq!(s[0].prio, 1);
            assert_eq!(s[0].app, "Gosub(callme-rec,s,1)", "[{hook}]");
            let exit = if *by_macro { "MacroExit()" } else { "Return()" };
            assert_eq!(s.last().unwrap().app, exit, "[{hook}]");
            assert!(
                s.iter().all(|p| !p.app.contains("PREDIAL_HOOK_RET")),
                "[{hook}] must not touch PREDIAL_HOOK_RET (BYPASS skips the trunk)"
            );
            called.insert(hook.clone());
        }
        assert!(d.refused.is_empty(), "FreePBX {v}: refused {:?}", d.refused);
    }
    let module = Dialplan::freepbx(17, true);
    let defined: BTreeSet<String> = module
        .contexts
        .keys()
        .filter(|k| k.ends_with("-predial-hook"))
        .cloned()
        .collect();
    assert_eq!(defined, called);
}

/// The module sets none of the variables FreePBX's recording uses (it runs its own, separate
/// MixMonitor), and FreePBX uses none of callme's.
#[test]
fn module_leaves_freepbx_recording_variables_alone() {
    let d = Dialplan::freepbx(17, false);
    let set_target = |app: &str| -> Option<String> {
        let a = args(app, "Set")?;
        let target = a.split('=').next()?.trim_start_matches("__").to_string();
        Some(target)
    };
    let mut freepbx: BTreeSet<String> = d
        .contexts
        .values()
        .flat_map(|c| c.exts.values().flatten())
        .filter_map(|p| set_target(&p.app))
        .collect();
    // Read by FreePBX but set elsewhere (globals, the MixMonitor application, callers).
    for v in [
        "MIXMON_DIR",
        "MIXMON_FORMAT",
        "MIXMON_POST",
        "MIXMON_BEEP",
        "MIXMONITOR_FILENAME",
        "PREDIAL_HOOK_RET",
        "ARG1",
        "ARG2",
        "ARG3",
    ] {
        freepbx.insert(v.to_string());
    }
    for v in ["REC_STATUS", "CALLFILENAME", "REC_POLICY_MODE", "MON_FMT"] {
        assert!(freepbx.contains(v), "fixture lacks {v}: {freepbx:?}");
    }

    let module = read("contrib/b24_continuous_parallel.conf");
    let module_sets: BTreeSet<String> = module
        .lines()
        .map(strip_comment)
        .filter_map(|l| {
            let a = args(l, "Set")?;
            let t = a.split('=').next()?;
            // LOCAL(x) / GLOBAL(x) name a variable too.
            let t = t
                .strip_prefix("LOCAL(")
                .or_else(|| t.strip_prefix("GLOBAL("))
                .map_or(t, |x| x.trim_end_matches(')'));
            Some(t.trim_start_matches("__").to_string())
        })
        .collect();
    assert!(module_sets.contains("CallMeLINKEDID"), "{module_sets:?}");
    for v in &module_sets {
        assert!(!freepbx.contains(v), "the module sets FreePBX's {v}");
    }
    let generated: String = ["recording.conf", "core-16.conf", "core-17.conf"]
        .iter()
        .map(|f| read(&format!("tests/fixtures/freepbx/{f}")))
        .collect();
    for ours in ["CallMeLINKEDID", "CallMeFULLFNAME", "CALLME_REC"] {
        assert!(!generated.contains(ours), "FreePBX uses {ours}");
    }
}

#[test]
fn lookup_follows_asterisks_rules() {
    let mut d = Dialplan::default();
    d.load(
        "t",
        "[a]\ninclude => b\ninclude => c\nexten => s,1,NoOp(a)\n\
         [b]\nexten => s,1,NoOp(b)\nexten => x,2,NoOp(b2)\n\
         [c]\nexten => x,1,NoOp(c)\nexten => _8XX,1,NoOp(pattern)\n\
         [a]\nexten => s,1,NoOp(again)\n",
    );
    assert_eq!(d.find("a", "s").as_deref(), Some("a"), "own before include");
    assert_eq!(
        d.find("a", "x").as_deref(),
        Some("c"),
        "b has x but no priority 1"
    );
    assert_eq!(d.find("a", "812").as_deref(), Some("c"));
    assert_eq!(d.find("a", "8123"), None);
    assert_eq!(d.refused, vec!["t:12".to_string()], "second a,s,1 refused");
    assert!(matches("_X.", "12") && !matches("_X.", "1") && !matches("_Z", "0"));
}
