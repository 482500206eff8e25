//! A client of the control API over the Unix socket, used by the CLI and the benchmarks.
//! It keeps one HTTP/1.1 connection open and reuses it.

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

use crate::api::ErrorBody;

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
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => ClientError::Api {
                status,
                code: e.code,
                message: e.error,
            },
            Err(_) => ClientError::Api {
                status,
                code: "http".into(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            },
        })
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
