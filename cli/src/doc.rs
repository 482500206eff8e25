//! `murmur doc`: shared documents.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use murmur_client::api::{ChangeJson, DocJson, DocUpdate, DocsList, History};
use murmur_client::{Client, encode_query};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum DocAction {
    /// Print a document (or the value at PATH) as JSON, now or at an earlier point
    Get {
        /// Topic the document lives in
        topic: String,
        /// Document id
        doc: String,
        /// Path inside the document (`a/b/0`)
        #[arg(default_value = "")]
        path: String,
        /// As it was at a local offset (digits), an event id (64 hex digits) or a time
        /// (RFC 3339, e.g. 2026-11-22T08:00:00Z)
        #[arg(long, value_name = "POINT")]
        at: Option<String>,
    },
    /// Put a JSON value at PATH (`murmur doc set site/1 config rate 5`)
    Set {
        topic: String,
        doc: String,
        path: String,
        /// JSON (`5`, `"text"`, `{"a":1}`); a bare word is taken as a string
        value: String,
    },
    /// Delete the key or list element at PATH
    Del {
        topic: String,
        doc: String,
        path: String,
    },
    /// Create a counter at PATH
    Counter {
        topic: String,
        doc: String,
        path: String,
        #[arg(default_value_t = 0, allow_hyphen_values = true)]
        value: i64,
    },
    /// Add BY (default 1) to the counter at PATH
    Incr {
        topic: String,
        doc: String,
        path: String,
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
    /// Insert a JSON value into the list at PATH at INDEX
    Insert {
        topic: String,
        doc: String,
        path: String,
        index: usize,
        value: String,
    },
    /// Remove COUNT (default 1) elements of the list at PATH from INDEX
    Remove {
        topic: String,
        doc: String,
        path: String,
        index: usize,
        #[arg(default_value_t = 1)]
        count: usize,
    },
    /// Create a collaborative text at PATH
    Text {
        topic: String,
        doc: String,
        path: String,
        #[arg(default_value = "")]
        value: String,
    },
    /// Edit the text at PATH: delete DELETE characters at INDEX, insert TEXT there
    Splice {
        topic: String,
        doc: String,
        path: String,
        index: usize,
        delete: usize,
        #[arg(default_value = "")]
        text: String,
    },
    /// Apply several operations as one atomic change: a JSON array of operations from
    /// OPS or stdin (`[{"op":"set","path":"a","value":1},{"op":"delete","path":"b"}]`)
    Apply {
        topic: String,
        doc: String,
        /// The operations (default: stdin)
        ops: Option<String>,
        /// A message recorded with the change
        #[arg(long, short)]
        message: Option<String>,
    },
    /// List a document's changes: who, when, how many operations
    History {
        topic: String,
        doc: String,
        /// Most changes to list
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// List the documents of a topic
    List { topic: String },
    /// Print the document (or PATH) now and after every change, one JSON per line
    Follow {
        topic: String,
        doc: String,
        #[arg(default_value = "")]
        path: String,
    },
}

fn value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

async fn change(
    c: &mut Client,
    topic: &str,
    doc: &str,
    ops: Value,
    message: Option<String>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let r: ChangeJson = c
        .post(
            "/v1/doc",
            &json!({"topic": topic, "doc": doc, "ops": ops, "message": message}),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {} seq {} offset {} change {}",
            r.topic,
            r.doc,
            r.seq,
            r.offset,
            &r.hash[..16.min(r.hash.len())]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one `murmur doc` action against the daemon at `socket`.
pub async fn run(socket: &Path, json_out: bool, action: DocAction) -> anyhow::Result<ExitCode> {
    let mut c = Client::new(socket);
    let one = |op: Value| Value::Array(vec![op]);
    match action {
        DocAction::Get { topic, doc, path, at } => {
            let mut q = format!("/v1/doc?topic={}&doc={}&path={}", encode_query(&topic), encode_query(&doc), encode_query(&path));
            if let Some(at) = at {
                if at.bytes().all(|b| b.is_ascii_digit()) {
                    q.push_str(&format!("&at_offset={at}"));
                } else if at.len() == 64 && at.bytes().all(|b| b.is_ascii_hexdigit()) {
                    q.push_str(&format!("&at_event={at}"));
                } else {
                    q.push_str(&format!("&at_time={}", encode_query(&at)));
                }
            }
            let d: DocJson = c.get(&q).await?;
            if json_out {
                println!("{}", serde_json::to_string(&d)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&d.value)?);
                if d.missing > 0 {
                    eprintln!("murmur: {} referenced changes have not arrived yet", d.missing);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DocAction::Set { topic, doc, path, value: v } => {
            change(&mut c, &topic, &doc, one(json!({"op": "set", "path": path, "value": value(&v)})), None, json_out).await
        }
        DocAction::Del { topic, doc, path } => {
            change(&mut c, &topic, &doc, one(json!({"op": "delete", "path": path})), None, json_out).await
        }
        DocAction::Counter { topic, doc, path, value: v } => {
            change(&mut c, &topic, &doc, one(json!({"op": "counter", "path": path, "value": v})), None, json_out).await
        }
        DocAction::Incr { topic, doc, path, by } => {
            change(&mut c, &topic, &doc, one(json!({"op": "increment", "path": path, "by": by})), None, json_out).await
        }
        DocAction::Insert { topic, doc, path, index, value: v } => {
            change(&mut c, &topic, &doc, one(json!({"op": "insert", "path": path, "index": index, "value": value(&v)})), None, json_out).await
        }
        DocAction::Remove { topic, doc, path, index, count } => {
            change(&mut c, &topic, &doc, one(json!({"op": "remove", "path": path, "index": index, "count": count})), None, json_out).await
        }
        DocAction::Text { topic, doc, path, value: v } => {
            change(&mut c, &topic, &doc, one(json!({"op": "text", "path": path, "value": v})), None, json_out).await
        }
        DocAction::Splice { topic, doc, path, index, delete, text } => {
            change(&mut c, &topic, &doc, one(json!({"op": "splice", "path": path, "index": index, "delete": delete, "insert": text})), None, json_out).await
        }
        DocAction::Apply { topic, doc, ops, message } => {
            let text = match ops {
                Some(t) if t != "-" => t,
                _ => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading operations from stdin")?;
                    s
                }
            };
            let ops: Value = serde_json::from_str(&text).context("the operations are not JSON")?;
            if !ops.is_array() {
                bail!("the operations must be a JSON array");
            }
            change(&mut c, &topic, &doc, ops, message, json_out).await
        }
        DocAction::History { topic, doc, limit } => {
            let h: History = c
                .get(&format!("/v1/doc/history?topic={}&doc={}&limit={limit}", encode_query(&topic), encode_query(&doc)))
                .await?;
            if json_out {
                println!("{}", serde_json::to_string(&h)?);
            } else {
                println!("{:>8}  {:<16}  {:>6}  {:<24}  {:>4}  message", "offset", "author", "seq", "time", "ops");
                for e in &h.changes {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time.ms);
                    println!(
                        "{:>8}  {:<16}  {:>6}  {:<24}  {:>4}  {}",
                        e.offset,
                        &e.author[..16.min(e.author.len())],
                        e.seq,
                        humantime::format_rfc3339_millis(t).to_string(),
                        e.ops,
                        e.message.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DocAction::List { topic } => {
            let l: DocsList = c.get(&format!("/v1/docs?topic={}", encode_query(&topic))).await?;
            if json_out {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                for d in &l.docs {
                    println!("{d}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DocAction::Follow { topic, doc, path } => {
            let q = format!("/v1/doc/follow?topic={}&doc={}&path={}", encode_query(&topic), encode_query(&doc), encode_query(&path));
            crate::stream::lines(&mut c, &q, |line| {
                let u: DocUpdate = serde_json::from_slice(line).context("bad line in the follow stream")?;
                if json_out {
                    println!("{}", serde_json::to_string(&u)?);
                } else {
                    println!("{}", serde_json::to_string(&u.value)?);
                }
                Ok(crate::stream::Next::More)
            })
            .await
        }
    }
}
