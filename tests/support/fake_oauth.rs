//! A fake Bitrix24 OAuth server (`oauth.bitrix.info/oauth/token/`, bitrix24-api.md §1.3) on
//! 127.0.0.1 port 0. It trades a refresh token for a new pair through the fake portal
//! ([`super::fake_bitrix::FakeBitrix::refresher`]), so the portal knows the new access token.
//! `set_refuse(true)` answers every refresh with `invalid_grant`, as after the app was removed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

pub const CLIENT_ID: &str = "local.test.1";
pub const CLIENT_SECRET: &str = "client-secret-xyz";

use super::fake_bitrix::Refresher;

struct Shared {
    refuse: AtomicBool,
    /// Successful refreshes.
    refreshes: AtomicUsize,
    /// Every request's query, with the secrets replaced, for assertions.
    seen: Mutex<Vec<String>>,
}

pub struct FakeOAuth {
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl FakeOAuth {
    /// `client_endpoint` goes into every answer, as the real server sends it.
    pub fn start(refresher: Refresher, client_endpoint: String) -> FakeOAuth {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake OAuth"));
        let port = server.server_addr().to_ip().expect("IP").port();
        let shared = Arc::new(Shared {
            refuse: AtomicBool::new(false),
            refreshes: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let thread = {
            let (server, shared) = (server.clone(), shared.clone());
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let url = req.url().to_string();
                    let query = url.split_once('?').map_or("", |(_, q)| q);
                    let get = |k: &str| {
                        query
                            .split('&')
                            .filter_map(|p| p.split_once('='))
                            .find(|(n, _)| *n == k)
                            .map(|(_, v)| v.to_string())
                            .unwrap_or_default()
                    };
                    shared
                        .seen
                        .lock()
                        .unwrap()
                        .push(get("grant_type") + "&" + &get("client_id"));
                    let (status, body) = if get("grant_type") != "refresh_token"
                        || get("client_id") != CLIENT_ID
                        || get("client_secret") != CLIENT_SECRET
                    {
                        (
                            401,
                            json!({"error":"invalid_client","error_description":"Invalid client"}),
                        )
                    } else if shared.refuse.load(Ordering::SeqCst) {
                        (
                            400,
                            json!({"error":"invalid_grant","error_description":"Invalid grant"}),
                        )
                    } else {
                        match refresher(&get("refresh_token")) {
                            Some((a, r)) => {
                                shared.refreshes.fetch_add(1, Ordering::SeqCst);
                                let now = SystemTime::now()
                                    .duration_since(UNIX_EPOCH)
                                    .unwrap()
                                    .as_secs();
                                (
                                    200,
                                    json!({
                                        "access_token": a, "refresh_token": r,
                                        "expires": now + 3600, "expires_in": 3600,
                                        "client_endpoint": client_endpoint,
                                        "server_endpoint": "https://oauth.bitrix.info/rest/",
                                        "domain": "test.bitrix24.ru", "member_id": "member-1",
                                        "scope": "telephony,crm,user", "status": "L", "user_id": 1,
                                    }),
                                )
                            }
                            None => (
                                400,
                                json!({"error":"invalid_grant","error_description":"Invalid grant"}),
                            ),
                        }
                    };
                    let _ = req.respond(
                        tiny_http::Response::from_string(body.to_string()).with_status_code(status),
                    );
                }
            })
        };
        FakeOAuth {
            shared,
            server,
            thread: Some(thread),
            port,
        }
    }

    /// `http://127.0.0.1:PORT/oauth/token/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/oauth/token/", self.port)
    }

    pub fn set_refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    pub fn refreshes(&self) -> usize {
        self.shared.refreshes.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }
}

impl Drop for FakeOAuth {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
