//! Authentication (session cookie or bearer token), CSRF for cookie-authenticated mutations,
//! role checks, login rate limiting, and the audit trail of every mutating request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bams_catalog::{AclEntry, Authenticated, NewAudit, Role, TokenKind, TokenScope, User};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult, Json};
use crate::policy::{self, Grants, On, Privs};
use crate::state::AppState;

/// Cookie carrying the session token.
pub const SESSION_COOKIE: &str = "bams_session";
/// Header echoing the session's CSRF token on cookie-authenticated mutations.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub user: User,
    /// Token id (session or API token).
    pub token_id: i64,
    /// Token scope.
    pub scope: TokenScope,
    /// Came with the session cookie (not a bearer header).
    pub via_cookie: bool,
    /// Global role and ACL entries.
    pub grants: Grants,
    /// The session's CSRF token, which the web UI's pages carry for their actions.
    pub csrf: Option<String>,
}

impl Caller {
    /// Privileges on an object path.
    pub fn privs_at(&self, path: &str) -> Privs {
        self.grants.at(path)
    }

    /// Refuse unless the caller holds one of `privs` on `path`.
    pub fn require_on(&self, privs: Privs, path: &str) -> ApiResult<()> {
        if self.grants.at(path).any_of(privs) {
            Ok(())
        } else {
            Err(denied(&self.user, privs, path))
        }
    }

    /// Is this the caller's own user?
    pub fn is_self(&self, user_id: i64) -> bool {
        self.user.id == user_id
    }

    /// Privileges on a repository: its own path, and the path of the pool that targets it.
    /// Entries on either decide (their union); without any, the global role.
    pub async fn repository_privs(&self, st: &AppState, repo: &bams_catalog::Repository) -> ApiResult<Privs> {
        Ok(self.repository_access(st, repo).await?.1)
    }

    /// A repository's ACL path (see [`repository_object`]) and the caller's privileges on it.
    pub async fn repository_access(
        &self,
        st: &AppState,
        repo: &bams_catalog::Repository,
    ) -> ApiResult<(String, Privs)> {
        let (path, pool_of) = repository_object(st, repo).await?;
        let mut paths = vec![path];
        if let Some(pool) = st.catalog.pool_of_repository(pool_of).await? {
            paths.push(policy::pool_path(&pool.name));
        }
        let privs = self.grants.at_any(&paths);
        Ok((paths.swap_remove(0), privs))
    }

    /// Refuse unless the caller holds one of `privs` on the repository.
    pub async fn require_repository(
        &self,
        st: &AppState,
        privs: Privs,
        repo: &bams_catalog::Repository,
    ) -> ApiResult<()> {
        let (path, held) = self.repository_access(st, repo).await?;
        if held.any_of(privs) {
            Ok(())
        } else {
            Err(denied(&self.user, privs, &path))
        }
    }

    /// Privileges on a pool: its own path and its repository's (entries on either decide).
    pub async fn pool_privs(&self, st: &AppState, pool: &bams_catalog::Pool) -> ApiResult<Privs> {
        let repo = st.catalog.get_repository(pool.repository).await?;
        Ok(self.grants.at_any(&[policy::pool_path(&pool.name), policy::repository_path(&repo.name)]))
    }

    /// Refuse unless the caller holds one of `privs` on the pool.
    pub async fn require_pool(&self, st: &AppState, privs: Privs, pool: &bams_catalog::Pool) -> ApiResult<()> {
        if self.pool_privs(st, pool).await?.any_of(privs) {
            Ok(())
        } else {
            Err(denied(&self.user, privs, &policy::pool_path(&pool.name)))
        }
    }
}

/// The ACL path of a repository, and the repository whose pool also decides: an agent's own
/// repository `P@A` is `/repositories/P/agents/A`, below its parent, so entries on the parent
/// (and its pool) reach it and an entry of its own can narrow or widen them.
async fn repository_object(st: &AppState, repo: &bams_catalog::Repository) -> ApiResult<(String, i64)> {
    match repo.parent {
        Some(parent) => {
            let p = st.catalog.get_repository(parent).await?;
            let agent = repo.name.rsplit_once('@').map_or(repo.name.as_str(), |(_, a)| a);
            Ok((format!("{}/agents/{agent}", policy::repository_path(&p.name)), p.id))
        }
        None => Ok((policy::repository_path(&repo.name), repo.id)),
    }
}

fn denied(user: &User, privs: Privs, path: &str) -> ApiError {
    ApiError::forbidden(format!(
        "this needs {} on {path}; {} (role {}) does not have it there",
        privs.names().join(" or "),
        user.username,
        user.role
    ))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| ApiError::unauthorized("authentication required"))
    }
}

fn is_mutation(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Routes an append-only token may use: the repository endpoint, where its handler refuses
/// deletes and overwrites.
fn append_only_allowed(path: &str) -> bool {
    path.starts_with("/api/v1/repo/")
}

/// A local socket peer as a caller: a user named `unix:NAME` with its group's role, no ACL
/// entries, and no sessions or tokens of its own (it needs none).
fn local_peer(st: &AppState, peer: &crate::local_socket::Peer, route: &str) -> ApiResult<Authenticated> {
    let cfg = &st.config.socket_roles;
    let role = peer.role.ok_or_else(|| {
        ApiError::forbidden(format!(
            "the Linux user {} is in none of the groups {}, {}, {}",
            peer.username, cfg.admin_group, cfg.operator_group, cfg.viewer_group
        ))
    })?;
    let own_credentials = route.starts_with("/api/v1/tokens")
        || (route.starts_with("/api/v1/auth/") && route != "/api/v1/auth/me" && route != "/api/v1/auth/permissions");
    if own_credentials {
        return Err(ApiError::forbidden("local socket users have no sessions or tokens of their own"));
    }
    let id = -1 - i64::from(peer.uid);
    let user = User {
        id,
        username: format!("unix:{}", peer.username),
        role,
        email: None,
        disabled: false,
        totp: false,
        created_at: 0,
    };
    let token = bams_catalog::AuthToken {
        id: 0,
        user_id: id,
        kind: TokenKind::Api,
        name: "local socket".into(),
        scope: TokenScope::Full,
        created_at: 0,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    Ok(Authenticated { user, token, csrf: None })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A verified credential, its user's ACL entries, and when it was verified.
type CachedAuth = (Authenticated, Arc<Vec<AclEntry>>, Instant);

/// Successful authentications remembered for one second, so a busy API client costs one
/// catalog lookup per second instead of one per request. Any local change to users or tokens
/// clears it at once; a revocation made on another server of a scale-out group takes effect
/// here within the TTL.
pub struct AuthCache {
    entries: Mutex<HashMap<[u8; 32], CachedAuth>>,
}

const AUTH_TTL: Duration = Duration::from_secs(1);

impl Default for AuthCache {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl AuthCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedAuth>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &[u8; 32]) -> Option<(Authenticated, Arc<Vec<AclEntry>>)> {
        let map = self.lock();
        map.get(key).filter(|(_, _, at)| at.elapsed() < AUTH_TTL).map(|(a, acl, _)| (a.clone(), acl.clone()))
    }

    fn put(&self, key: [u8; 32], a: Authenticated, acl: Arc<Vec<AclEntry>>) {
        let mut map = self.lock();
        if map.len() >= 10_000 {
            map.retain(|_, (_, _, at)| at.elapsed() < AUTH_TTL);
        }
        map.insert(key, (a, acl, Instant::now()));
    }

    /// Forget everything (after a user or token changed).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

async fn authenticate(st: &AppState, secret: &str) -> ApiResult<Option<(Authenticated, Arc<Vec<AclEntry>>)>> {
    let key = *blake3::hash(secret.as_bytes()).as_bytes();
    if let Some(found) = st.auth_cache.get(&key) {
        return Ok(Some(found));
    }
    let Some(a) = st.catalog.authenticate(secret).await? else { return Ok(None) };
    let acl = Arc::new(st.catalog.list_acl(Some(a.user.id)).await?);
    st.auth_cache.put(key, a.clone(), acl.clone());
    Ok(Some((a, acl)))
}

/// Middleware: authenticate, enforce CSRF and token scope, audit mutations.
pub async fn middleware(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| path.clone(), |m| m.as_str().to_string());
    let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let mutation = is_mutation(&method);
    let page = crate::ui::wants_page(&method, &path, req.headers());

    let mut username: Option<String> = None;
    let outcome: Result<(), ApiError> = async {
        // Fail closed: a route without a rule in the policy table is refused.
        let rule = policy::rule_for(method.as_str(), &route)
            .ok_or_else(|| ApiError::forbidden(format!("no access policy for {method} {route}")))?;
        if rule.on == On::Public {
            return Ok(());
        }
        let peer = req.extensions().get::<crate::local_socket::Peer>().cloned();
        let (Authenticated { user, token, csrf }, acl, via_cookie) = match (bearer(req.headers()), peer) {
            // On the local socket without a token: the Linux user the kernel names.
            (None, Some(peer)) => {
                // Named in the audit log even when refused.
                username = Some(format!("unix:{}", peer.username));
                (local_peer(&st, &peer, &route)?, Arc::default(), false)
            }
            (bearer, _) => {
                let (secret, via_cookie) = match (bearer, cookie(req.headers(), SESSION_COOKIE)) {
                    (Some(b), _) => (b.to_string(), false),
                    (None, Some(c)) => (c.to_string(), true),
                    (None, None) => {
                        return Err(ApiError::unauthorized("authentication required: log in or send a bearer token"))
                    }
                };
                let (a, acl) = authenticate(&st, &secret)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("invalid, expired or revoked credentials"))?;
                (a, acl, via_cookie)
            }
        };
        username = Some(user.username.clone());
        if via_cookie && mutation {
            let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if csrf.is_none() || sent != csrf.as_deref() {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "csrf", "missing or wrong X-CSRF-Token header"));
            }
        }
        if token.scope == TokenScope::AppendOnly && !append_only_allowed(&path) {
            return Err(ApiError::forbidden("an append-only token may only use the repository endpoint"));
        }
        if rule.on == On::Agent && token.scope != TokenScope::Agent {
            return Err(ApiError::forbidden("only an agent credential may use /api/v1/agent/"));
        }
        if token.scope == TokenScope::Agent && !append_only_allowed(&path) && rule.on != On::Agent {
            return Err(ApiError::forbidden(
                "an agent credential may only use the repository endpoint and /api/v1/agent/",
            ));
        }
        let grants = Grants::new(user.role, acl);
        let allowed = match rule.on {
            On::Public | On::Own | On::SelfOr(_) | On::Agent => true,
            On::Path(p) => grants.at(p).any_of(rule.privs),
            On::Repository | On::Pool => {
                grants.anywhere_below("/repositories", rule.privs) || grants.anywhere_below("/pools", rule.privs)
            }
            On::Image => grants.anywhere_below("/images", rule.privs),
        };
        if !allowed {
            let on = match rule.on {
                On::Path(p) => p,
                On::Pool => "/pools",
                On::Image => "/images",
                _ => "/repositories",
            };
            return Err(denied(&user, rule.privs, on));
        }
        let caller = Caller { user, token_id: token.id, scope: token.scope, via_cookie, grants, csrf };
        req.extensions_mut().insert(caller);
        Ok(())
    }
    .await;

    // What the request changes, for the audit log: the object from the route (and the
    // answer), the fields from a JSON body (names only).
    // Reads that are POSTs only because their request is long (a flash's byte ranges) are
    // not changes.
    let audited =
        mutation && !route.starts_with("/api/v1/repo/") && route != "/api/v1/auth/login" && !route.ends_with("/ranges");
    let mut object = audited.then(|| route_object(&route, &path));
    let response = match outcome {
        Ok(()) => {
            let mut too_large = false;
            if let (Some(o), true) = (object.as_mut(), is_json(req.headers())) {
                let (parts, body) = req.into_parts();
                let bytes = match axum::body::to_bytes(body, st.config.max_body_bytes).await {
                    Ok(b) => b,
                    Err(_) => {
                        too_large = true;
                        Default::default()
                    }
                };
                o.changes = json_fields(&bytes);
                req = Request::from_parts(parts, axum::body::Body::from(bytes));
            }
            let response = if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request bodies are limited to {} bytes (max_body_bytes)", st.config.max_body_bytes),
                )
                .into_response()
            } else {
                next.run(req).await
            };
            match object.as_mut() {
                Some(o) if response.status().is_success() && is_json(response.headers()) => {
                    let (parts, body) = response.into_parts();
                    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                    name_object(o, &bytes);
                    Response::from_parts(parts, axum::body::Body::from(bytes))
                }
                _ => response,
            }
        }
        // A person's browser asking for a page is sent to the login page, or shown why not.
        Err(e) if page => crate::ui::refusal(e, req.uri()),
        Err(e) => e.into_response(),
    };
    if mutation
        && (route.starts_with("/api/v1/users")
            || route.starts_with("/api/v1/tokens")
            || route.starts_with("/api/v1/acl")
            || route == "/api/v1/auth/logout")
    {
        st.auth_cache.clear();
    }
    if mutation {
        let status = response.status();
        let result = if status.is_success() {
            "ok"
        } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS) {
            "denied"
        } else {
            "error"
        };
        // The login route records the name that tried, so failed guesses are visible.
        let username = username.or_else(|| response.extensions().get::<LoginName>().map(|n| n.0.clone()));
        let entry = NewAudit {
            time: bams_catalog::now_ms(),
            username,
            method: method.to_string(),
            route,
            target: Some(path),
            status: status.as_u16(),
            result: result.into(),
            remote_addr: remote,
            object,
        };
        if let Err(e) = st.catalog.audit(&entry).await {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }
    response
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

/// The object a route acts on: its kind from the route's first part (`/api/v1/jobs/{id}/run`
/// → `job`), its id from the route's first parameter in the concrete path.
fn route_object(route: &str, path: &str) -> bams_catalog::AuditObject {
    let parts: Vec<&str> = route.trim_start_matches("/api/v1/").split('/').collect();
    let kind = match parts.first().copied().unwrap_or_default() {
        "users" => "user",
        "tokens" => "token",
        "acl" => "acl entry",
        "repositories" => "repository",
        "snapshots" => "snapshot",
        "jobs" => "job",
        "schedules" => "schedule",
        "runs" => "run",
        "pools" => "pool",
        "agents" => "agent",
        "disk" => "disk repository",
        "iscsi" => "iscsi target",
        "tape" => match parts.get(1).copied() {
            Some("pools") => "tape pool",
            Some("volumes") => "tape volume",
            Some("drives") => "tape drive",
            _ => "tape library",
        },
        "bacula" => "bacula",
        "auth" => "session",
        other => other,
    };
    let concrete: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let id = parts.iter().zip(&concrete).find(|(r, _)| r.starts_with('{')).map(|(_, c)| (*c).to_string());
    bams_catalog::AuditObject { kind: kind.to_string(), id, name: None, changes: Vec::new() }
}

/// Top-level field names of a JSON object body, sorted (values are never kept).
fn json_fields(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => {
            let mut keys: Vec<String> = m.keys().take(64).map(|k| k.chars().take(64).collect()).collect();
            keys.sort();
            keys
        }
        _ => Vec::new(),
    }
}

/// Fill the object's id and name from the JSON answer (`id`, then `name`/`username`/`iqn`).
fn name_object(o: &mut bams_catalog::AuditObject, body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let text = |k: &str| match &v[k] {
        serde_json::Value::String(s) => Some(s.chars().take(200).collect::<String>()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if o.id.is_none() {
        o.id = text("id").or_else(|| text("run_id"));
    }
    o.name = ["name", "username", "iqn", "barcode"].iter().find_map(|k| text(k));
}

/// The user name a login attempt used (for the audit log).
#[derive(Clone)]
struct LoginName(String);

/// Brake on password guessing, without handing anyone a way to lock others out: failures are
/// counted per (user name, client address) and per client address, and after a few free
/// attempts each further try must wait a delay that doubles with every failure (1 s, 2 s, 4 s,
/// … up to 5 min). A guesser slows down only itself; the real user, from their own address,
/// logs in as usual. Counts are forgotten after an hour without failures or on success.
pub struct LoginLimiter {
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Failures allowed before delays start: per (user, address), and per address across names.
const FREE_PER_USER: u32 = 3;
const FREE_PER_ADDR: u32 = 10;
const MAX_DELAY: Duration = Duration::from_secs(300);
const FORGET_AFTER: Duration = Duration::from_secs(3600);

impl Default for LoginLimiter {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

/// How long after the last failure the next attempt must wait.
fn delay(failures: u32, free: u32) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - free).min(9)).min(MAX_DELAY)
}

impl LoginLimiter {
    fn keys(user: &str, addr: &str) -> [(String, u32); 2] {
        [(format!("u:{addr}\0{user}"), FREE_PER_USER), (format!("a:{addr}"), FREE_PER_ADDR)]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds until this client may try this user again, if it must wait.
    fn locked(&self, user: &str, addr: &str) -> Option<u64> {
        let map = self.lock();
        Self::keys(user, addr)
            .iter()
            .filter_map(|(k, free)| {
                let (n, last) = map.get(k)?;
                delay(*n, *free).checked_sub(last.elapsed()).filter(|d| !d.is_zero())
            })
            .max()
            .map(|d| d.as_secs().max(1))
    }

    fn failed(&self, user: &str, addr: &str) {
        let mut map = self.lock();
        if map.len() > 100_000 {
            map.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
        }
        for (k, _) in Self::keys(user, addr) {
            let e = map.entry(k).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = Instant::now();
        }
    }

    fn succeeded(&self, user: &str, addr: &str) {
        let mut map = self.lock();
        for (k, _) in Self::keys(user, addr) {
            map.remove(&k);
        }
    }
}

/// Login request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// The current code of the user's authenticator, when they turned TOTP on.
    #[serde(default)]
    pub totp: Option<String>,
}

/// Login answer; the token also works as `Authorization: Bearer`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Session token.
    pub token: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// The user's role.
    pub role: Role,
    /// Send as `X-CSRF-Token` on mutations authenticated by the cookie.
    pub csrf_token: String,
}

/// Log in: session cookie + token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub async fn login(
    State(st): State<AppState>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Json(req): Json<LoginRequest>,
) -> Response {
    let addr = connect.map_or_else(|| "unknown".to_string(), |c| c.0 .0.ip().to_string());
    let name = LoginName(req.username.clone());
    let mut resp = login_inner(&st, &addr, req).await.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(name);
    resp
}

async fn login_inner(st: &AppState, addr: &str, req: LoginRequest) -> ApiResult<Response> {
    if let Some(secs) = st.limiter.locked(&req.username, addr) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed logins from this address; try again in {secs} s"),
        );
        e.details = Some(serde_json::json!({ "retry_after_secs": secs }));
        return Err(e);
    }
    let Some(user) = st.catalog.check_login(&req.username, &req.password).await? else {
        st.limiter.failed(&req.username, addr);
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    if let Some(secret) = st.catalog.totp_state(user.id).await?.secret {
        let Some(code) = req.totp.as_deref().filter(|c| !c.is_empty()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "totp_required",
                "this account needs the code of its authenticator app: send it as `totp`",
            ));
        };
        let step = crate::totp::matching_step(&secret, code, crate::totp::now_secs());
        let fresh = match step {
            Some(step) => st.catalog.use_totp_step(user.id, step).await?,
            None => false,
        };
        if !fresh {
            st.limiter.failed(&req.username, addr);
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "totp_invalid", "wrong or already used code"));
        }
    }
    st.limiter.succeeded(&req.username, addr);
    let ttl = Duration::from_secs(st.config.session_hours.max(1) * 3600);
    let expires = bams_catalog::now_ms() + ttl.as_millis() as i64;
    let (_, secret, csrf) =
        st.catalog.create_token(user.id, TokenKind::Session, "login", TokenScope::Full, Some(expires)).await?;
    let secure = if st.config.tls.cert.is_some() { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", ttl.as_secs());
    let body = LoginResponse {
        token: secret,
        expires_at: bams_catalog::time_ms::rfc3339(expires),
        role: user.role,
        csrf_token: csrf.unwrap_or_default(),
    };
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Log out: revoke the session (or token) used for this request.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204)))]
pub async fn logout(State(st): State<AppState>, caller: Caller) -> ApiResult<Response> {
    st.catalog.revoke_token(caller.token_id).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("bams_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

/// A second factor being set up: scan `otpauth_url` (or type `secret`) into an authenticator
/// app, then confirm with a code.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TotpSetup {
    /// Shared secret, base32.
    pub secret: String,
    /// `otpauth://` URL for QR codes.
    pub otpauth_url: String,
}

/// A code from the authenticator app (and, to turn the factor off, the password).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    /// The 6-digit code.
    pub code: String,
    /// Your password (to turn the factor off).
    #[serde(default)]
    pub password: Option<String>,
}

/// Start setting up TOTP for yourself (it is required at login once confirmed).
#[utoipa::path(post, path = "/api/v1/auth/totp", tag = "auth", responses((status = 200, body = TotpSetup)))]
pub async fn totp_setup(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<TotpSetup>> {
    let secret = crate::totp::new_secret();
    st.catalog.set_totp_pending(caller.user.id, &secret).await?;
    let otpauth_url = crate::totp::otpauth_url(&caller.user.username, &secret);
    Ok(Json(TotpSetup { secret, otpauth_url }))
}

/// Confirm the factor being set up with a code from the app; from then on logins need codes.
#[utoipa::path(post, path = "/api/v1/auth/totp/confirm", tag = "auth", request_body = TotpCode, responses((status = 204), (status = 400, body = crate::error::ErrorBody)))]
pub async fn totp_confirm(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<TotpCode>,
) -> ApiResult<StatusCode> {
    let Some(pending) = st.catalog.totp_state(caller.user.id).await?.pending else {
        return Err(ApiError::bad_request("no second factor is being set up: POST /api/v1/auth/totp first"));
    };
    let step = crate::totp::matching_step(&pending, &req.code, crate::totp::now_secs())
        .ok_or_else(|| ApiError::bad_request("the code does not match; check the app's clock and try the next code"))?;
    st.catalog.confirm_totp(caller.user.id, step).await?;
    st.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Turn your second factor off (needs your password and a current code).
#[utoipa::path(post, path = "/api/v1/auth/totp/disable", tag = "auth", request_body = TotpCode, responses((status = 204), (status = 403, body = crate::error::ErrorBody)))]
pub async fn totp_disable(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<TotpCode>,
) -> ApiResult<StatusCode> {
    let password = req.password.as_deref().unwrap_or_default();
    if st.catalog.check_login(&caller.user.username, password).await?.is_none() {
        return Err(ApiError::forbidden("give your password to turn the second factor off"));
    }
    let state = st.catalog.totp_state(caller.user.id).await?;
    let valid = state.secret.as_deref().and_then(|s| crate::totp::matching_step(s, &req.code, crate::totp::now_secs()));
    if state.secret.is_some() && valid.is_none() {
        return Err(ApiError::forbidden("wrong code"));
    }
    st.catalog.disable_totp(caller.user.id).await?;
    st.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Who am I.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", responses((status = 200, body = User)))]
pub async fn me(caller: Caller) -> Json<User> {
    Json(caller.user)
}
