//! NDJSON streams from the daemon (`murmur sub`, `murmur doc follow`).

use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use murmur_client::Client;

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
    let lines = client.lines(path).await?;
    let mut lines = std::pin::pin!(lines);
    while let Some(line) = lines.next().await {
        if let Next::Done = on_line(&line.context("reading the stream")?)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    eprintln!("murmur: the daemon closed the stream");
    Ok(ExitCode::FAILURE)
}
