//! The connection to a daemon: one HTTP/1.1 connection over the Unix socket, reused,
//! and the typed calls of the API.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::api::{
    BatchRequest, BatchResponse, ChangeJson, ChangeRequest, DocJson, DocsList, ErrorBody,
    EventJson, EventsPage, History, InterestRequest, InterestResponse, PeersResponse,
    PublishRequest, Published, ReplicationJson, Status, TopicsResponse,
};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no murmur daemon is running at {0} (start one with `murmur daemon`, or point --socket / MURMUR_SOCKET at a running daemon)"
    )]
    NotRunning(PathBuf),
    /// The socket exists but we may not use it.
    #[error("permission denied on {0} (the socket is mode 0600: run as the daemon's user)")]
    PermissionDenied(PathBuf),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Transport failure.
    #[error("talking to the daemon at {socket}: {message}")]
    Transport {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        message: String,
    },
    /// The answer did not parse.
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
}

/// A connection to one daemon.
pub struct Client {
    socket: PathBuf,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client for the daemon at `socket` (connects on first use).
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            conn: None,
        }
    }

    fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            socket: self.socket.clone(),
            message: e.to_string(),
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        let usable = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        if !usable {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning(self.socket.clone())
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        ClientError::PermissionDenied(self.socket.clone())
                    }
                    _ => self.transport(e),
                })?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.transport(e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some(sender);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ClientError::Decode("no connection".into()))
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://murmur{path}"))
            .header(hyper::header::HOST, "murmur");
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let socket = self.socket.clone();
        let transport = |e: hyper::Error| ClientError::Transport {
            socket: socket.clone(),
            message: e.to_string(),
        };
        let sender = self.connect().await?;
        sender.ready().await.map_err(transport)?;
        sender.send_request(req).await.map_err(transport)
    }

    /// Sends a request and collects the whole body; non-2xx answers become [`ClientError::Api`].
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        Err(api_error(status, &body))
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, None, Bytes::new()).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// POST a JSON body, parse a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let body = self
            .call(
                Method::POST,
                path,
                Some("application/json"),
                Bytes::from(bytes),
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

impl Client {
    /// `GET /v1/status`.
    pub async fn status(&mut self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// Publishes one event with `data` as its payload (sent as text when it is UTF-8,
    /// else as base64). The answer means the event is durable.
    pub async fn publish(
        &mut self,
        topic: &str,
        data: impl AsRef<[u8]>,
    ) -> Result<Published, ClientError> {
        self.publish_request(&payload_request(topic, data.as_ref()))
            .await
    }

    /// `POST /v1/events` with every field of [`PublishRequest`].
    pub async fn publish_request(
        &mut self,
        req: &PublishRequest,
    ) -> Result<Published, ClientError> {
        self.post("/v1/events", req).await
    }

    /// Publishes many events atomically, with one WAL sync; answers in order.
    pub async fn publish_batch(
        &mut self,
        events: Vec<PublishRequest>,
    ) -> Result<Vec<Published>, ClientError> {
        let r: BatchResponse = self
            .post("/v1/events/batch", &BatchRequest { events })
            .await?;
        Ok(r.events)
    }

    /// Events in local arrival order from offset `from`, optionally only topics matching
    /// `pattern`; read on from the page's `next`.
    pub async fn read(
        &mut self,
        pattern: Option<&str>,
        from: u64,
        limit: usize,
    ) -> Result<EventsPage, ClientError> {
        let mut path = format!("/v1/events?from={from}&limit={limit}");
        if let Some(p) = pattern {
            path.push_str(&format!("&pattern={}", encode_query(p)));
        }
        self.get(&path).await
    }

    /// One log of `topic` (by `author`, default this node) from seq `from`.
    pub async fn log(
        &mut self,
        topic: &str,
        author: Option<&str>,
        from: u64,
        limit: usize,
    ) -> Result<EventsPage, ClientError> {
        let mut path = format!(
            "/v1/log?topic={}&from={from}&limit={limit}",
            encode_query(topic)
        );
        if let Some(a) = author {
            path.push_str(&format!("&author={}", encode_query(a)));
        }
        self.get(&path).await
    }

    /// Every event matching `pattern`, from offset `from` (default: only new ones), then
    /// live, in local arrival order, exactly once each. Resume after a disconnect from
    /// the last event's `offset` + 1.
    pub async fn follow(
        &mut self,
        pattern: &str,
        from: Option<u64>,
    ) -> Result<BoxStream<'static, Result<EventJson, ClientError>>, ClientError> {
        let mut path = format!("/v1/follow?format=ndjson&pattern={}", encode_query(pattern));
        if let Some(f) = from {
            path.push_str(&format!("&from={f}"));
        }
        self.events(&path).await
    }

    /// Follows `pattern` as the named consumer `name`: from the first event it has not
    /// acknowledged (a new consumer starts at new events, or at `from`; a `from` given
    /// for an existing one moves its cursor). Acknowledge with [`Self::ack`]; what is
    /// not acknowledged is sent again by the next follow of the same name, which also
    /// ends this one. `auto_ack` acknowledges each page once it was written to the
    /// connection and the next is asked for (the daemon cannot know the application
    /// handled it: what the client's and the kernel's buffers held when the
    /// application died, often several pages, is not sent again).
    pub async fn follow_consumer(
        &mut self,
        name: &str,
        pattern: &str,
        from: Option<u64>,
        auto_ack: bool,
    ) -> Result<BoxStream<'static, Result<EventJson, ClientError>>, ClientError> {
        let mut path = format!(
            "/v1/follow?format=ndjson&pattern={}&consumer={}",
            encode_query(pattern),
            encode_query(name)
        );
        if let Some(f) = from {
            path.push_str(&format!("&from={f}"));
        }
        if auto_ack {
            path.push_str("&ack=auto");
        }
        self.events(&path).await
    }

    /// The events of the NDJSON follow stream at `path`.
    async fn events(
        &mut self,
        path: &str,
    ) -> Result<BoxStream<'static, Result<EventJson, ClientError>>, ClientError> {
        let lines = self.lines(path).await?;
        Ok(lines
            .map(|line| {
                line.and_then(|l| {
                    serde_json::from_slice(&l).map_err(|e| ClientError::Decode(e.to_string()))
                })
            })
            .boxed())
    }

    /// Acknowledges, for consumer `name`, the event at `offset` and every one before it.
    pub async fn ack(
        &mut self,
        name: &str,
        offset: u64,
    ) -> Result<crate::api::ConsumerJson, ClientError> {
        self.post(
            &format!("/v1/consumers/{}/ack", encode_query(name)),
            &crate::api::AckRequest { offset },
        )
        .await
    }

    /// Every named consumer, with its lag.
    pub async fn consumers(&mut self) -> Result<crate::api::ConsumersJson, ClientError> {
        self.get("/v1/consumers").await
    }

    /// Deletes a named consumer.
    pub async fn delete_consumer(&mut self, name: &str) -> Result<(), ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/consumers/{}", encode_query(name)),
            None,
            Bytes::new(),
        )
        .await
        .map(|_| ())
    }

    /// The non-empty lines of an NDJSON stream at `path` (a follow stream). A non-2xx
    /// answer is [`ClientError::Api`] before any line.
    pub async fn lines(
        &mut self,
        path: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, ClientError>>, ClientError> {
        let resp = self.send(Method::GET, path, None, Bytes::new()).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &body));
        }
        let socket = self.socket.clone();
        let state = (resp.into_body(), Vec::<u8>::new(), false);
        Ok(
            futures_util::stream::unfold(state, move |(mut body, mut buf, ended)| {
                let socket = socket.clone();
                async move {
                    loop {
                        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            if line.len() > 1 {
                                let line = Bytes::copy_from_slice(&line[..line.len() - 1]);
                                return Some((Ok(line), (body, buf, ended)));
                            }
                            continue;
                        }
                        if ended {
                            return None;
                        }
                        match body.frame().await {
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    buf.extend_from_slice(&data);
                                }
                            }
                            Some(Err(e)) => {
                                let err = ClientError::Transport {
                                    socket,
                                    message: e.to_string(),
                                };
                                return Some((Err(err), (body, buf, true)));
                            }
                            None => return None,
                        }
                    }
                }
            })
            .boxed(),
        )
    }

    /// `GET /v1/topics`: every topic held, with its logs and heads.
    pub async fn topics(&mut self) -> Result<TopicsResponse, ClientError> {
        self.get("/v1/topics").await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&mut self) -> Result<PeersResponse, ClientError> {
        self.get("/v1/peers").await
    }

    /// `GET /v1/replication`: per topic and peer, how far apart they were.
    pub async fn replication(&mut self) -> Result<ReplicationJson, ClientError> {
        self.get("/v1/replication").await
    }

    /// The topic patterns this node replicates.
    pub async fn interest(&mut self) -> Result<Vec<String>, ClientError> {
        let r: InterestResponse = self.get("/v1/interest").await?;
        Ok(r.patterns)
    }

    /// Adds and/or removes a pattern; answers with the patterns in force.
    pub async fn change_interest(
        &mut self,
        req: &InterestRequest,
    ) -> Result<Vec<String>, ClientError> {
        let r: InterestResponse = self.post("/v1/interest", req).await?;
        Ok(r.patterns)
    }

    /// The documents of `topic`.
    pub async fn docs(&mut self, topic: &str) -> Result<DocsList, ClientError> {
        self.get(&format!("/v1/docs?topic={}", encode_query(topic)))
            .await
    }

    /// A document's value at `path` (`""`: the whole document).
    pub async fn doc(
        &mut self,
        topic: &str,
        doc: &str,
        path: &str,
    ) -> Result<DocJson, ClientError> {
        self.get(&format!(
            "/v1/doc?topic={}&doc={}&path={}",
            encode_query(topic),
            encode_query(doc),
            encode_query(path)
        ))
        .await
    }

    /// Changes a document; the answer means the change is durable.
    pub async fn change_doc(&mut self, req: &ChangeRequest) -> Result<ChangeJson, ClientError> {
        self.post("/v1/doc", req).await
    }

    /// A page of a document's history from offset `from`.
    pub async fn doc_history(
        &mut self,
        topic: &str,
        doc: &str,
        from: u64,
    ) -> Result<History, ClientError> {
        self.get(&format!(
            "/v1/doc/history?topic={}&doc={}&from={from}",
            encode_query(topic),
            encode_query(doc)
        ))
        .await
    }
}

/// A publish request for `data`: text when it is UTF-8, else base64.
pub fn payload_request(topic: &str, data: &[u8]) -> PublishRequest {
    use base64::Engine;
    let (data, data_b64) = match std::str::from_utf8(data) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(data)),
        ),
    };
    PublishRequest {
        topic: topic.to_owned(),
        data,
        data_b64,
        content_type: None,
        idempotency_key: None,
    }
}

/// The error in a non-2xx answer: the documented JSON body, or the raw text.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.code,
            message: e.error,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http".into(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
        },
    }
}

/// Percent-encodes a query value (topics and patterns contain `/`, `+` and `#`).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
