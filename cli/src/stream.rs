//! NDJSON streams from the daemon (`murmur sub`, `murmur doc follow`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use murmur_daemon::client::Client;

/// What to do after a line.
pub enum Next {
    /// Keep reading.
    More,
    /// Stop: the caller has what it wanted.
    Done,
}

/// Opens `path` and calls `on_line` for every non-empty line until it says `Done`
/// (success) or the daemon closes the stream (failure, said on stderr).
pub async fn lines(
    client: &mut Client,
    path: &str,
    mut on_line: impl FnMut(&[u8]) -> anyhow::Result<Next>,
) -> anyhow::Result<ExitCode> {
    let resp = client.send(Method::GET, path, None, Bytes::new()).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = serde_json::from_slice::<murmur_daemon::api::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("{msg} (HTTP {status})");
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("reading the stream")?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if line.is_empty() {
                continue;
            }
            if let Next::Done = on_line(line)? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    eprintln!("murmur: the daemon closed the stream");
    Ok(ExitCode::FAILURE)
}
