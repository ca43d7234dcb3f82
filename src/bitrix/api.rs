//! Typed Bitrix24 REST methods over any [`Transport`].
//!
//! Each method has a `*_params` builder so that the outbox (and `--dry-run`) can record the
//! exact JSON that will be sent, and a parser for its `result`. Parsers are lenient where
//! Bitrix24 is inconsistent (IDs as numbers or strings) and strict where a wrong guess would
//! do harm (a missing `CALL_ID` is an error, not an empty string).

use serde_json::{json, Map, Value};

use super::client::Transport;
use super::envelope::json_u64;
use super::error::Error;
use super::urlenc::url_encode;

/// Call types for `TYPE` (bitrix24-api.md §2.1).
pub const CALL_OUTGOING: u8 = 1;
pub const CALL_INCOMING: u8 = 2;
pub const CALL_INCOMING_REDIRECTED: u8 = 3;
pub const CALL_CALLBACK: u8 = 4;

/// Parameters of `telephony.externalcall.register` (§2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterParams {
    pub user_id: u64,
    pub phone_number: String,
    /// 1 outgoing, 2 incoming, 3 incoming redirected, 4 callback (see `CALL_*`).
    pub call_type: u8,
    /// ISO-8601 *with* an offset, e.g. `2026-03-07T10:20:30+03:00`: without one Bitrix24 reads
    /// it in the portal's timezone (§10.2). Empty means "now, server time".
    pub call_start_date: String,
    /// Our DID / trunk; Bitrix24 auto-creates the line and uses it in the duplicate key (§2.1).
    pub line_number: Option<String>,
    pub crm_create: bool,
    /// Unique per physical call; without it Bitrix24 hands back an older open call's CALL_ID
    /// for a similar call within 30 minutes (§2.1 "30-minute re-registration", §11 item 1).
    pub external_call_id: String,
    /// Show the card to `user_id` right away. Sent explicitly: the server default is 1 (§2.1).
    pub show: bool,
}

impl RegisterParams {
    pub fn to_params(&self) -> Value {
        let mut p = Map::new();
        p.insert("USER_ID".into(), json!(self.user_id));
        p.insert("PHONE_NUMBER".into(), json!(self.phone_number));
        p.insert("TYPE".into(), json!(self.call_type));
        if !self.call_start_date.is_empty() {
            p.insert("CALL_START_DATE".into(), json!(self.call_start_date));
        }
        if let Some(line) = &self.line_number {
            p.insert("LINE_NUMBER".into(), json!(line));
        }
        p.insert("CRM_CREATE".into(), json!(u8::from(self.crm_create)));
        if !self.external_call_id.is_empty() {
            p.insert("EXTERNAL_CALL_ID".into(), json!(self.external_call_id));
        }
        p.insert("SHOW".into(), json!(u8::from(self.show)));
        Value::Object(p)
    }
}

/// What `register` tells us about the new call (§2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub call_id: String,
    /// The primary CRM item Bitrix24 bound the call to; `None` for `""`/`null`.
    pub crm_entity_type: Option<String>,
    pub crm_entity_id: Option<u64>,
}

/// `telephony.externalcall.register`.
pub fn register(t: &dyn Transport, p: &RegisterParams) -> Result<Registered, Error> {
    let reply = t.call("telephony.externalcall.register", &p.to_params())?;
    parse_registered(&reply.result)
}

/// The `result` of a register, sent alone or inside a `batch`.
pub fn parse_registered(result: &Value) -> Result<Registered, Error> {
    let r = object(result, "telephony.externalcall.register")?;
    let call_id = match r.get("CALL_ID") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        other => return Err(Error::Decode(format!("register: no CALL_ID in {other:?}"))),
    };
    // Present only when CRM_CREATE=1 and creation failed, e.g. for employees' own numbers
    // ("Lead creation is disabled for local users", §2.2, ISSUE-335). Not a call failure.
    if let Some(Value::String(why)) = r.get("LEAD_CREATION_ERROR") {
        log::info!("bitrix24: call {call_id} registered, but no lead was created: {why}");
    }
    Ok(Registered {
        call_id,
        crm_entity_type: r
            .get("CRM_ENTITY_TYPE")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        crm_entity_id: r
            .get("CRM_ENTITY_ID")
            .and_then(json_u64)
            .filter(|&id| id > 0),
    })
}

/// Parameters of `telephony.externalcall.finish` (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishParams {
    pub call_id: String,
    /// The last employee who talked to the client. Bitrix24 hides only *this* user's card and
    /// makes them responsible for CRM items auto-created by the call (§3.1).
    pub user_id: u64,
    /// Talk seconds. Bitrix24 marks the call successful when > 0.
    pub duration: u64,
    /// `200`, `304`, `486`, `603-S`… (§3.1). Empty lets Bitrix24 derive it from `duration`.
    pub status_code: String,
    /// Sent explicitly because the default is disputed: docs say 1, the server treats absent
    /// as 0 (§3.1).
    pub add_to_chat: bool,
    pub failed_reason: Option<String>,
}

impl FinishParams {
    pub fn to_params(&self) -> Value {
        let mut p = Map::new();
        p.insert("CALL_ID".into(), json!(self.call_id));
        p.insert("USER_ID".into(), json!(self.user_id));
        p.insert("DURATION".into(), json!(self.duration));
        if !self.status_code.is_empty() {
            p.insert("STATUS_CODE".into(), json!(self.status_code));
        }
        p.insert("ADD_TO_CHAT".into(), json!(u8::from(self.add_to_chat)));
        if let Some(reason) = &self.failed_reason {
            p.insert("FAILED_REASON".into(), json!(reason));
        }
        Value::Object(p)
    }
}

/// `telephony.externalcall.finish`. A second finish of the same call fails with an error
/// for which [`Error::is_call_not_found`] is true (§3.1 behaviour step 9).
pub fn finish(t: &dyn Transport, p: &FinishParams) -> Result<(), Error> {
    let reply = t.call("telephony.externalcall.finish", &p.to_params())?;
    // The statistics row. `ERRORS.ACTIVITY_CREATION` means "no CRM item to attach the call
    // to" (§3.2), which is normal for unknown numbers without CRM_CREATE.
    if let Some(errors) = reply.result.get("ERRORS") {
        log::debug!("bitrix24: finish of {} reported {errors}", p.call_id);
    }
    Ok(())
}

/// Params of `show`/`hide`: `USER_ID` as an array works for one or many users (§4.1).
pub fn card_params(call_id: &str, user_ids: &[u64]) -> Value {
    json!({ "CALL_ID": call_id, "USER_ID": user_ids })
}

/// `telephony.externalcall.show`. `Ok(false)` means the call is no longer active (e.g.
/// already finished): Bitrix24 answers `{"result": false}` rather than an error (§4.1).
pub fn show(t: &dyn Transport, call_id: &str, user_ids: &[u64]) -> Result<bool, Error> {
    let reply = t.call(
        "telephony.externalcall.show",
        &card_params(call_id, user_ids),
    )?;
    as_bool(&reply.result, "telephony.externalcall.show")
}

/// `telephony.externalcall.hide`. Must be sent *before* `finish` for every user other than the
/// finishing one: after finish it returns `Ok(false)` and the card stays open (§4.1, §11 item 2).
pub fn hide(t: &dyn Transport, call_id: &str, user_ids: &[u64]) -> Result<bool, Error> {
    let reply = t.call(
        "telephony.externalcall.hide",
        &card_params(call_id, user_ids),
    )?;
    as_bool(&reply.result, "telephony.externalcall.hide")
}

/// One CRM item found by phone number (§4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmMatch {
    /// `CONTACT`, `COMPANY` or `LEAD`.
    pub entity_type: String,
    pub entity_id: u64,
    pub assigned_by_id: Option<u64>,
}

/// `telephony.externalCall.searchCrmEntities`. An empty `Vec` means the number is unknown.
pub fn search_crm_entities(t: &dyn Transport, phone: &str) -> Result<Vec<CrmMatch>, Error> {
    const METHOD: &str = "telephony.externalCall.searchCrmEntities";
    let reply = t.call(METHOD, &json!({ "PHONE_NUMBER": phone }))?;
    // `[]` when nothing is found; a PHP array can also serialise as an object with index keys.
    let rows: Vec<&Value> = match &reply.result {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        Value::Null => Vec::new(),
        other => {
            return Err(Error::Decode(format!(
                "{METHOD}: expected a list, got {other}"
            )))
        }
    };
    rows.into_iter()
        .map(|row| {
            let entity_type = row.get("CRM_ENTITY_TYPE").and_then(Value::as_str);
            let entity_id = row.get("CRM_ENTITY_ID").and_then(json_u64);
            match (entity_type, entity_id) {
                (Some(ty), Some(id)) => Ok(CrmMatch {
                    entity_type: ty.to_string(),
                    entity_id: id,
                    // IDs may be numeric strings even though the docs show ints (§4.3).
                    assigned_by_id: row
                        .get("ASSIGNED_BY_ID")
                        .and_then(json_u64)
                        .filter(|&id| id > 0),
                }),
                _ => Err(Error::Decode(format!("{METHOD}: bad entry {row}"))),
            }
        })
        .collect()
}

/// The employee responsible for the client calling from `phone`.
///
/// Priority is contact → company → lead (the product decision in mission.md), *not* the
/// order Bitrix24 returns, which is contacts, leads, companies (§4.3). The first item of the
/// best type that has an `ASSIGNED_BY_ID` wins.
pub fn responsible_for(t: &dyn Transport, phone: &str) -> Result<Option<u64>, Error> {
    let found = search_crm_entities(t, phone)?;
    Ok(["CONTACT", "COMPANY", "LEAD"].iter().find_map(|ty| {
        found
            .iter()
            .filter(|m| m.entity_type.eq_ignore_ascii_case(ty))
            .find_map(|m| m.assigned_by_id)
    }))
}

/// The responsible employee (`ASSIGNED_BY_ID`) of one CRM item, by `crm.{contact,company,
/// lead}.get` (§7.2, IDs come back as strings). `None` for another entity type or no owner.
pub fn crm_item_responsible(
    t: &dyn Transport,
    entity_type: &str,
    id: u64,
) -> Result<Option<u64>, Error> {
    let method = match entity_type.to_ascii_uppercase().as_str() {
        "CONTACT" => "crm.contact.get",
        "COMPANY" => "crm.company.get",
        "LEAD" => "crm.lead.get",
        _ => return Ok(None),
    };
    let reply = t.call(method, &json!({ "id": id }))?;
    Ok(reply.result.get("ASSIGNED_BY_ID").and_then(json_u64))
}

/// A Bitrix24 employee as `user.get` returns them (§6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    /// `UF_PHONE_INNER`, the internal number; `None` for `null` or `""`.
    pub inner: Option<String>,
    pub active: bool,
    /// `NAME LAST_NAME`, for logs and status pages.
    pub name: String,
}

/// Page size of every Bitrix24 list method (§6.2).
const PAGE: u64 = 50;
/// Stop paging after this many pages even if `next` keeps coming (100 000 users).
const MAX_PAGES: u64 = 2000;
/// Most users kept from `user.get`, whatever the pages hold: `MAX_PAGES` full pages. A portal
/// (or anything answering in its name) that sends more is refused rather than believed.
const MAX_USERS: usize = (MAX_PAGES * PAGE) as usize;
/// Room reserved up front from the `total` the first page claims. A number from the network
/// sizes no allocation beyond this; the list grows past it only with users actually received.
const RESERVE_MAX: usize = 1000;

/// All active employees, following `next` page by page (50 a page, §6.2).
///
/// `sort=ID ASC` keeps the offsets stable if someone is added while we page.
pub fn users_all(t: &dyn Transport) -> Result<Vec<User>, Error> {
    let mut users = Vec::new();
    let mut start = 0u64;
    for _ in 0..MAX_PAGES {
        let params = json!({
            "FILTER": { "ACTIVE": true },
            "sort": "ID",
            "order": "ASC",
            "start": start,
        });
        let reply = t.call("user.get", &params)?;
        let Value::Array(rows) = &reply.result else {
            return Err(Error::Decode(format!(
                "user.get: expected a list, got {}",
                reply.result
            )));
        };
        if start == 0 {
            // A missing `total` means an empty list (§6.2). Capped: it is the network's word.
            let total = usize::try_from(reply.total.unwrap_or(0)).unwrap_or(usize::MAX);
            users.reserve(total.min(RESERVE_MAX));
        }
        if users.len().saturating_add(rows.len()) > MAX_USERS {
            return Err(Error::Decode(format!(
                "user.get: more than {MAX_USERS} users, giving up"
            )));
        }
        for row in rows {
            users.push(parse_user(row)?);
        }
        match reply.next {
            Some(next) if next > start => start = next,
            Some(next) => {
                return Err(Error::Decode(format!(
                    "user.get: next={next} does not advance past start={start}"
                )))
            }
            None => return Ok(users),
        }
    }
    Err(Error::Decode(format!(
        "user.get: more than {} users, giving up",
        MAX_PAGES * PAGE
    )))
}

fn parse_user(row: &Value) -> Result<User, Error> {
    let id = row
        .get("ID")
        .and_then(json_u64)
        .ok_or_else(|| Error::Decode(format!("user.get: user without ID: {row}")))?;
    let inner = match row.get("UF_PHONE_INNER") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    // ACTIVE is a JSON bool (§6.2); tolerate the Y/N form of older APIs. Absent: we asked
    // for active users only.
    let active = match row.get("ACTIVE") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "Y" | "1" | "true"),
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        _ => true,
    };
    let part = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let name = format!("{} {}", part("NAME"), part("LAST_NAME"))
        .trim()
        .to_string();
    Ok(User {
        id,
        inner,
        active,
        name,
    })
}

// --- batch (bitrix24-api.md §8) -------------------------------------------------------------

/// Most commands one `batch` runs; later ones get `ERROR_BATCH_LENGTH_EXCEEDED` (§8).
pub const BATCH_MAX: usize = 50;

/// One `cmd` entry: `method?query`, the query encoded the way PHP's `parse_str` reads it
/// (`USER_ID[]=19&USER_ID[]=20`, `FILTER[ACTIVE]=1`). Inside a JSON body the string is sent
/// as-is, not double-encoded (§8).
pub fn batch_command(method: &str, params: &Value) -> String {
    let mut query = String::new();
    if let Value::Object(map) = params {
        for (k, v) in map {
            php_query(&mut query, &url_encode(k), v);
        }
    }
    if query.is_empty() {
        method.to_string()
    } else {
        format!("{method}?{query}")
    }
}

fn php_query(out: &mut String, key: &str, v: &Value) {
    match v {
        Value::Array(items) => {
            for item in items {
                php_query(out, &format!("{key}[]"), item);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                php_query(out, &format!("{key}[{}]", url_encode(k)), item);
            }
        }
        scalar => {
            let text = match scalar {
                Value::String(s) => url_encode(s),
                Value::Bool(b) => u8::from(*b).to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(&text);
        }
    }
}

/// One command's key and outcome in a [`batch`] answer.
pub type BatchOutcome = (String, Result<Value, Error>);

/// `batch` with `halt=0`: every command runs and has its own outcome. `cmds` are
/// `(key, method, params)`; at most [`BATCH_MAX`]. The outer error (transport, 503, auth)
/// is returned as `Err`; per-command outcomes come back keyed like `cmds`. A command that
/// is in neither `result` nor `result_error` gets a retryable error, since it did not run.
pub fn batch(
    t: &dyn Transport,
    cmds: &[(String, &str, Value)],
) -> Result<Vec<BatchOutcome>, Error> {
    let mut cmd = Map::new();
    for (key, method, params) in cmds {
        cmd.insert(key.clone(), Value::String(batch_command(method, params)));
    }
    let reply = t.call("batch", &json!({ "halt": 0, "cmd": cmd }))?;
    let empty = Map::new();
    // Empty sections are serialised as `[]` (§8).
    let section = |name: &str| reply.result.get(name).and_then(Value::as_object);
    let results = section("result").unwrap_or(&empty);
    let errors = section("result_error").unwrap_or(&empty);
    Ok(cmds
        .iter()
        .map(|(key, method, _)| {
            let outcome = if let Some(e) = errors.get(key) {
                let text = |k: &str| match e.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                Err(Error::Api {
                    // Sub-commands carry no HTTP status; 400 is what the portal gives the same
                    // error alone (§9.3). Retryable codes are recognised by code.
                    status: 400,
                    code: text("error"),
                    description: text("error_description"),
                })
            } else if let Some(r) = results.get(key) {
                Ok(r.clone())
            } else {
                Err(Error::Transport(format!(
                    "batch: no result for {method} ({key}); it did not run"
                )))
            };
            (key.clone(), outcome)
        })
        .collect())
}

fn object<'a>(v: &'a Value, method: &str) -> Result<&'a Map<String, Value>, Error> {
    v.as_object()
        .ok_or_else(|| Error::Decode(format!("{method}: expected an object, got {v}")))
}

fn as_bool(v: &Value, method: &str) -> Result<bool, Error> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64() != Some(0.0)),
        other => Err(Error::Decode(format!(
            "{method}: expected true/false, got {other}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// attachRecord (§4.2)

/// What `telephony.externalCall.attachRecord` sends with the `CALL_ID` (§4.2 modes 1-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordParams {
    /// Mode 1: Bitrix24 downloads the file itself, once, from a public URL.
    Url { url: String, filename: String },
    /// Mode 2: the file inline, base64-encoded.
    Content { filename: String, base64: String },
    /// Mode 3: only the name; Bitrix24 answers with an upload URL.
    NameOnly { filename: String },
}

/// The answer of `attachRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The record is stored (modes 1 and 2): its Drive file id, when given.
    File(Option<u64>),
    /// Mode 3: POST the file as multipart field `field_name` to `upload_url`.
    UploadUrl {
        upload_url: String,
        field_name: String,
    },
}

/// Params of `attachRecord`. `FILENAME` must end with a lower-case `.mp3` or `.wav` (§4.2).
pub fn attach_record_params(call_id: &str, p: &RecordParams) -> Value {
    match p {
        RecordParams::Url { url, filename } => {
            json!({ "CALL_ID": call_id, "FILENAME": filename, "RECORD_URL": url })
        }
        RecordParams::Content { filename, base64 } => {
            json!({ "CALL_ID": call_id, "FILENAME": filename, "FILE_CONTENT": base64 })
        }
        RecordParams::NameOnly { filename } => json!({ "CALL_ID": call_id, "FILENAME": filename }),
    }
}

/// `telephony.externalCall.attachRecord`. Only after `finish`: before it Bitrix24 answers
/// "Call is not found in the statistic table. Looks like it is not finished yet." (§4.2).
pub fn attach_record(
    t: &dyn Transport,
    call_id: &str,
    p: &RecordParams,
) -> Result<Attached, Error> {
    const METHOD: &str = "telephony.externalCall.attachRecord";
    let reply = t.call(METHOD, &attach_record_params(call_id, p))?;
    let r = object(&reply.result, METHOD)?;
    if let Some(url) = r.get("uploadUrl").and_then(Value::as_str) {
        return Ok(Attached::UploadUrl {
            upload_url: url.to_string(),
            field_name: r
                .get("fieldName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("file")
                .to_string(),
        });
    }
    if matches!(p, RecordParams::NameOnly { .. }) {
        return Err(Error::Decode(format!(
            "{METHOD}: no uploadUrl in {}",
            reply.result
        )));
    }
    Ok(Attached::File(r.get("FILE_ID").and_then(json_u64)))
}

#[cfg(test)]
mod tests {
    use super::super::envelope::Reply;
    use super::*;
    use std::sync::Mutex;

    /// Answers each call with the next canned result, remembering what was sent.
    struct Canned {
        replies: Mutex<Vec<Result<Reply, Error>>>,
        sent: Mutex<Vec<(String, Value)>>,
    }

    impl Canned {
        fn new(replies: Vec<Result<Reply, Error>>) -> Self {
            Canned {
                replies: Mutex::new(replies.into_iter().rev().collect()),
                sent: Mutex::new(Vec::new()),
            }
        }
    }

    impl Transport for Canned {
        fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
            self.sent
                .lock()
                .unwrap()
                .push((method.to_string(), params.clone()));
            self.replies.lock().unwrap().pop().expect("unexpected call")
        }
    }

    fn ok(result: Value) -> Result<Reply, Error> {
        Ok(Reply {
            result,
            next: None,
            total: None,
        })
    }

    #[test]
    fn register_params_are_typed() {
        let p = RegisterParams {
            user_id: 19,
            phone_number: "+79991234567".into(),
            call_type: CALL_INCOMING,
            call_start_date: "2026-03-07T10:20:30+03:00".into(),
            line_number: Some("8001231231".into()),
            crm_create: false,
            external_call_id: "pbx1-1795668285.0".into(),
            show: false,
        };
        assert_eq!(
            p.to_params(),
            json!({"USER_ID":19,"PHONE_NUMBER":"+79991234567","TYPE":2,
                   "CALL_START_DATE":"2026-03-07T10:20:30+03:00","LINE_NUMBER":"8001231231",
                   "CRM_CREATE":0,"EXTERNAL_CALL_ID":"pbx1-1795668285.0","SHOW":0})
        );
    }

    #[test]
    fn register_parses_the_nothing_found_response() {
        // ISSUE-335's body: CRM_ENTITY_TYPE "" and CRM_ENTITY_ID null mean "no primary".
        let t = Canned::new(vec![ok(json!({
            "CALL_ID":"externalCall.0d4250bf69d2bdbec8f88755985868f2.1676461289",
            "CRM_CREATED_LEAD":null,"CRM_CREATED_ENTITIES":[],"CRM_ENTITY_TYPE":"",
            "CRM_ENTITY_ID":null,"LEAD_CREATION_ERROR":"Lead creation is disabled for local users"}))]);
        let p = RegisterParams {
            user_id: 1,
            phone_number: "220".into(),
            call_type: 1,
            call_start_date: String::new(),
            line_number: None,
            crm_create: true,
            external_call_id: String::new(),
            show: true,
        };
        let r = register(&t, &p).unwrap();
        assert_eq!(r.crm_entity_type, None);
        assert_eq!(r.crm_entity_id, None);
        let sent = &t.sent.lock().unwrap()[0].1;
        assert!(sent.get("CALL_START_DATE").is_none());
        assert!(sent.get("EXTERNAL_CALL_ID").is_none());
        assert_eq!(sent["SHOW"], json!(1));
        assert_eq!(sent["CRM_CREATE"], json!(1));
    }

    #[test]
    fn register_without_call_id_is_a_decode_error() {
        let t = Canned::new(vec![ok(json!({"CRM_ENTITY_TYPE":""}))]);
        let p = RegisterParams {
            user_id: 1,
            phone_number: "1".into(),
            call_type: 2,
            call_start_date: String::new(),
            line_number: None,
            crm_create: false,
            external_call_id: "x".into(),
            show: true,
        };
        assert!(matches!(register(&t, &p), Err(Error::Decode(_))));
    }

    #[test]
    fn finish_sends_add_to_chat_explicitly() {
        let p = FinishParams {
            call_id: "externalCall.x.1".into(),
            user_id: 20,
            duration: 0,
            status_code: "304".into(),
            add_to_chat: false,
            failed_reason: None,
        };
        assert_eq!(
            p.to_params(),
            json!({"CALL_ID":"externalCall.x.1","USER_ID":20,"DURATION":0,
                   "STATUS_CODE":"304","ADD_TO_CHAT":0})
        );
    }

    #[test]
    fn responsible_prefers_contact_then_company_then_lead() {
        // Bitrix order is contacts, leads, companies; the lead must not win over the company.
        let rows = json!([
            {"CRM_ENTITY_TYPE":"CONTACT","CRM_ENTITY_ID":"5","ASSIGNED_BY_ID":null},
            {"CRM_ENTITY_TYPE":"LEAD","CRM_ENTITY_ID":7,"ASSIGNED_BY_ID":"3"},
            {"CRM_ENTITY_TYPE":"COMPANY","CRM_ENTITY_ID":9,"ASSIGNED_BY_ID":"4"}
        ]);
        let t = Canned::new(vec![ok(rows)]);
        assert_eq!(responsible_for(&t, "79991234567").unwrap(), Some(4));
        let t = Canned::new(vec![ok(json!([]))]);
        assert_eq!(responsible_for(&t, "79991234567").unwrap(), None);
    }

    #[test]
    fn users_follow_next_and_parse_quirks() {
        let page1 = Ok(Reply {
            result: json!([
                {"ID":"1","ACTIVE":true,"NAME":"Ann","LAST_NAME":"Lee","UF_PHONE_INNER":"219"},
                {"ID":"2","ACTIVE":true,"NAME":"Bob","UF_PHONE_INNER":null},
            ]),
            next: Some(50),
            total: Some(3),
        });
        let page2 = Ok(Reply {
            result: json!([{"ID":"51","ACTIVE":"Y","NAME":"","UF_PHONE_INNER":""}]),
            next: None,
            total: Some(3),
        });
        let t = Canned::new(vec![page1, page2]);
        let users = users_all(&t).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(
            users[0],
            User {
                id: 1,
                inner: Some("219".into()),
                active: true,
                name: "Ann Lee".into()
            }
        );
        assert_eq!(users[1].inner, None);
        assert_eq!(users[2].inner, None);
        let sent = t.sent.lock().unwrap();
        assert_eq!(sent[0].1["FILTER"], json!({"ACTIVE": true}));
        assert_eq!(sent[0].1["start"], json!(0));
        assert_eq!(sent[1].1["start"], json!(50));
    }

    #[test]
    fn a_huge_total_from_the_network_sizes_nothing() {
        // A `total` of u64::MAX used to go straight into `Vec::reserve` (capacity overflow,
        // a panic, or an allocation as large as the claim).
        let t = Canned::new(vec![Ok(Reply {
            result: json!([{"ID":"1","ACTIVE":true,"UF_PHONE_INNER":"219"}]),
            next: None,
            total: Some(u64::MAX),
        })]);
        let users = users_all(&t).unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.capacity() <= RESERVE_MAX, "{}", users.capacity());
    }

    #[test]
    fn more_users_than_the_cap_are_refused() {
        let row = json!({"ID":"1","ACTIVE":true});
        let page = Ok(Reply {
            result: Value::Array(vec![row; MAX_USERS + 1]),
            next: None,
            total: None,
        });
        let t = Canned::new(vec![page]);
        match users_all(&t) {
            Err(Error::Decode(why)) => assert!(why.contains("more than"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn batch_commands_use_php_encoding() {
        let p = card_params("externalCall.x.1", &[19, 20]);
        assert_eq!(
            batch_command("telephony.externalcall.show", &p),
            "telephony.externalcall.show?CALL_ID=externalCall.x.1&USER_ID[]=19&USER_ID[]=20"
        );
        let p = json!({"PHONE_NUMBER": "+7 900", "FILTER": {"ACTIVE": true}});
        assert_eq!(
            batch_command("m", &p),
            "m?FILTER[ACTIVE]=1&PHONE_NUMBER=%2B7%20900"
        );
    }

    #[test]
    fn batch_splits_results_and_errors() {
        let t = Canned::new(vec![ok(json!({
            "result": {"a": true},
            "result_error": {"b": {"error": "", "error_description": "Call is not found"},
                             "c": {"error": "OPERATION_TIME_LIMIT", "error_description": "x"}},
            "result_total": [], "result_next": [], "result_time": []
        }))]);
        let cmds = vec![
            ("a".to_string(), "telephony.externalcall.show", json!({})),
            ("b".to_string(), "telephony.externalcall.finish", json!({})),
            ("c".to_string(), "telephony.externalcall.hide", json!({})),
            ("d".to_string(), "telephony.externalcall.hide", json!({})),
        ];
        let out = batch(&t, &cmds).unwrap();
        assert_eq!(out[0].1, Ok(json!(true)));
        assert!(out[1].1.as_ref().unwrap_err().is_call_not_found());
        assert!(out[2].1.as_ref().unwrap_err().is_retryable());
        assert!(out[3].1.as_ref().unwrap_err().is_retryable());
        let sent = &t.sent.lock().unwrap()[0];
        assert_eq!(sent.0, "batch");
        assert_eq!(sent.1["cmd"]["a"], "telephony.externalcall.show");
    }

    #[test]
    fn users_stop_on_a_next_that_does_not_advance() {
        let page = || {
            Ok(Reply {
                result: json!([]),
                next: Some(0),
                total: None,
            })
        };
        let t = Canned::new(vec![page()]);
        assert!(matches!(users_all(&t), Err(Error::Decode(_))));
    }

    #[test]
    fn attach_record_modes() {
        let url = RecordParams::Url {
            url: "https://pbx/rec/a.mp3".into(),
            filename: "a.mp3".into(),
        };
        assert_eq!(
            attach_record_params("c1", &url),
            json!({"CALL_ID":"c1","FILENAME":"a.mp3","RECORD_URL":"https://pbx/rec/a.mp3"})
        );
        let t = Canned::new(vec![ok(json!({"FILE_ID": 9079}))]);
        assert_eq!(
            attach_record(&t, "c1", &url).unwrap(),
            Attached::File(Some(9079))
        );
        let t = Canned::new(vec![ok(json!({
            "uploadUrl": "https://p/rest/1/code/upload/?token=telephony%7Cx%7Cy",
            "fieldName": "file"}))]);
        let name = RecordParams::NameOnly {
            filename: "a.wav".into(),
        };
        assert_eq!(
            attach_record(&t, "c1", &name).unwrap(),
            Attached::UploadUrl {
                upload_url: "https://p/rest/1/code/upload/?token=telephony%7Cx%7Cy".into(),
                field_name: "file".into()
            }
        );
        assert_eq!(
            t.sent.lock().unwrap()[0].1,
            json!({"CALL_ID":"c1","FILENAME":"a.wav"})
        );
        let t = Canned::new(vec![ok(json!({"FILE_ID": 1}))]);
        assert!(matches!(
            attach_record(&t, "c1", &name),
            Err(Error::Decode(_))
        ));
    }
}
