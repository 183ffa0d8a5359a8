//! A test-only HTTP proxy that sits between bams and an S3 server, counts requests by kind
//! and injects the faults real object stores and networks produce: 500 and 503 SlowDown
//! replies, connections reset mid-body, stalls past the client's timeout, truncated GET bodies
//! and flipped bits in GET bodies. Decisions come from a seeded RNG so a failing run repeats.
//!
//! `GET /__bams_proxy/counts` returns the counters as JSON and `POST /__bams_proxy/reset`
//! zeroes them (the bench reads requests there; no S3 bucket can be named `__bams_proxy`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `500 InternalError` without forwarding.
    ServerError,
    /// `503 SlowDown` without forwarding.
    SlowDown,
    /// GET: half the body, then the connection drops. Other methods: the connection drops
    /// before forwarding, or after forwarding without a reply (the upload happened, the
    /// client does not know).
    Reset,
    /// Wait [`FaultPlan::stall`] before forwarding (the client should time out first).
    Stall,
    /// GET: only the first half of the body, with a matching `Content-Length`.
    Truncate,
    /// GET: one bit flipped somewhere in the body.
    FlipBits,
}

/// Which requests get which fault.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The fault to inject.
    pub fault: Fault,
    /// Chance per eligible request, 0.0..=1.0.
    pub probability: f64,
    /// Only requests with this method (`GET`, `PUT`, …); `None` = all.
    pub method: Option<String>,
    /// Only requests whose path contains this (e.g. `/data/` for packs).
    pub path_contains: Option<String>,
    /// How long [`Fault::Stall`] waits.
    pub stall: Duration,
}

impl FaultPlan {
    /// `fault` on every eligible request with probability `p`.
    pub fn new(fault: Fault, probability: f64) -> Self {
        Self { fault, probability, method: None, path_contains: None, stall: Duration::from_secs(5) }
    }

    /// Restrict to one HTTP method.
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_string());
        self
    }

    /// Restrict to paths containing `s`.
    pub fn path_contains(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_string());
        self
    }
}

/// Requests seen, by S3 operation.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Object reads (whole or ranged).
    pub get: u64,
    /// Bucket listings.
    pub list: u64,
    /// Uploads (including multipart parts).
    pub put: u64,
    /// POSTs (multipart create/complete, batch delete).
    pub post: u64,
    /// HEADs.
    pub head: u64,
    /// DELETEs.
    pub delete: u64,
    /// Every request.
    pub total: u64,
    /// Request bytes forwarded upstream.
    pub bytes_up: u64,
    /// Response bytes returned to the client.
    pub bytes_down: u64,
    /// Faults injected.
    pub faults: u64,
}

#[derive(Default)]
struct Counters {
    get: AtomicU64,
    list: AtomicU64,
    put: AtomicU64,
    post: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    total: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    faults: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            get: l(&self.get),
            list: l(&self.list),
            put: l(&self.put),
            post: l(&self.post),
            head: l(&self.head),
            delete: l(&self.delete),
            total: l(&self.total),
            bytes_up: l(&self.bytes_up),
            bytes_down: l(&self.bytes_down),
            faults: l(&self.faults),
        }
    }

    fn reset(&self) {
        for a in [
            &self.get,
            &self.list,
            &self.put,
            &self.post,
            &self.head,
            &self.delete,
            &self.total,
            &self.bytes_up,
            &self.bytes_down,
            &self.faults,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

struct State {
    upstream: String,
    client: reqwest::Client,
    plan: Mutex<Option<FaultPlan>>,
    rng: Mutex<rand::rngs::StdRng>,
    counts: Counters,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

impl State {
    fn decide(&self, method: &str, path: &str) -> Option<FaultPlan> {
        let plan = self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()?;
        if plan.method.as_deref().is_some_and(|m| m != method) {
            return None;
        }
        if plan.path_contains.as_deref().is_some_and(|p| !path.contains(p)) {
            return None;
        }
        let hit = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).gen_bool(plan.probability);
        if hit {
            self.counts.faults.fetch_add(1, Ordering::Relaxed);
        }
        hit.then_some(plan)
    }

    fn count(&self, method: &str, query: &str) {
        let c = &self.counts;
        c.total.fetch_add(1, Ordering::Relaxed);
        let which = match method {
            "GET" if query.contains("list-type") || query.contains("prefix=") => &c.list,
            "GET" => &c.get,
            "PUT" => &c.put,
            "POST" => &c.post,
            "HEAD" => &c.head,
            "DELETE" => &c.delete,
            _ => return,
        };
        which.fetch_add(1, Ordering::Relaxed);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, kill: Arc<tokio::sync::Notify>) -> Response<Body> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if path.starts_with("/__bams_proxy/") {
            if method == "POST" && path == "/__bams_proxy/reset" {
                self.counts.reset();
            }
            let body = serde_json::to_vec(&self.counts.snapshot()).unwrap_or_default();
            return Response::new(full(body));
        }
        self.count(&method, &query);
        let plan = self.decide(&method, &path);
        let (parts, incoming) = req.into_parts();
        let fault = plan.as_ref().map(|p| p.fault);
        let reset_before = fault == Some(Fault::Reset) && method != "GET" && self.rng_bool();
        if reset_before {
            // Drop the connection while the client is still sending.
            kill.notify_one();
            std::future::pending::<()>().await;
        }
        let body = match incoming.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return status(StatusCode::BAD_REQUEST, "client body"),
        };
        match fault {
            Some(Fault::ServerError) => return s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            Some(Fault::SlowDown) => return s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
            Some(Fault::Stall) => {
                if let Some(p) = &plan {
                    tokio::time::sleep(p.stall).await;
                }
            }
            _ => {}
        }
        self.counts.bytes_up.fetch_add(body.len() as u64, Ordering::Relaxed);
        let url = format!("{}{}", self.upstream, parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let mut fwd = self.client.request(parts.method.clone(), url);
        for (name, value) in &parts.headers {
            // The proxy already read the whole body: an `Expect: 100-continue` passed on makes
            // some servers (moto's werkzeug) read an empty body.
            if !matches!(name.as_str(), "connection" | "transfer-encoding" | "content-length" | "expect") {
                fwd = fwd.header(name, value);
            }
        }
        let up = match fwd.body(body).send().await {
            Ok(r) => r,
            Err(e) => return status(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
        };
        let st = up.status();
        let headers = up.headers().clone();
        let mut data = match up.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return status(StatusCode::BAD_GATEWAY, &format!("upstream body: {e}")),
        };
        if fault == Some(Fault::Reset) && method != "GET" {
            // The upstream did the work; the reply never arrives.
            kill.notify_one();
            std::future::pending::<()>().await;
        }
        let mut declared = data.len();
        let mut broken_after = None;
        if method == "GET" && data.len() > 1 {
            match fault {
                Some(Fault::Truncate) => {
                    data.truncate(data.len() / 2);
                    declared = data.len();
                }
                Some(Fault::Reset) => broken_after = Some(data.len() / 2),
                Some(Fault::FlipBits) => {
                    let (pos, bit) = {
                        let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        (rng.gen_range(0..data.len()), rng.gen_range(0..8u8))
                    };
                    data[pos] ^= 1 << bit;
                }
                _ => {}
            }
        }
        self.counts.bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
        let body = match broken_after {
            Some(n) => {
                let first = Bytes::copy_from_slice(&data[..n]);
                let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                    Ok(Frame::data(first)),
                    Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset")),
                ];
                StreamBody::new(futures_util::stream::iter(frames)).boxed()
            }
            None => full(data),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = st;
        for (name, value) in &headers {
            if !matches!(name.as_str(), "connection" | "transfer-encoding" | "content-length") {
                resp.headers_mut().append(name, value.clone());
            }
        }
        // A HEAD reply has no body but announces the object's length.
        let length = match headers.get(hyper::header::CONTENT_LENGTH) {
            Some(v) if method == "HEAD" => v.clone(),
            _ => hyper::header::HeaderValue::from(declared),
        };
        resp.headers_mut().insert(hyper::header::CONTENT_LENGTH, length);
        resp
    }

    fn rng_bool(&self) -> bool {
        self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).gen_bool(0.5)
    }
}

fn status(st: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(msg.to_string()));
    *r.status_mut() = st;
    r
}

fn s3_error(st: StatusCode, code: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by bams test proxy</Message></Error>"
    );
    let mut r = status(st, &xml);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/xml"));
    r
}

/// A running proxy; stopped on drop.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listen on `127.0.0.1:0` (or `listen`) and forward to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, seed: u64) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), upstream, seed)
    }

    /// Listen on a given address.
    pub fn start_on(listen: SocketAddr, upstream: &str, seed: u64) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("bams-fault-proxy")
            .build()
            .expect("proxy runtime");
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().build().expect("http client"),
            plan: Mutex::new(None),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            counts: Counters::default(),
        });
        let listener = rt.block_on(tokio::net::TcpListener::bind(listen)).expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let st = st.clone();
                tokio::spawn(async move {
                    let kill = Arc::new(tokio::sync::Notify::new());
                    let k2 = kill.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        let k = k2.clone();
                        async move { Ok::<_, Infallible>(st.handle(req, k).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = kill.notified() => {}
                    }
                });
            }
        });
        Self { port, state, rt: Some(rt) }
    }

    /// Port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, to use as the S3 endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Inject faults from now on (`None` = pass everything through).
    pub fn set_plan(&self, plan: Option<FaultPlan>) {
        *self.state.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = plan;
    }

    /// Requests so far.
    pub fn counts(&self) -> Counts {
        self.state.counts.snapshot()
    }

    /// Zero the counters.
    pub fn reset_counts(&self) {
        self.state.counts.reset();
    }

    /// Serve until the process is killed (for the `bams-s3-proxy` binary).
    pub fn run_forever(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.block_on(std::future::pending::<()>());
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
