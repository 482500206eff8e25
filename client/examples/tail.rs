//! Prints what the node holds, then every event matching a pattern, from the start and
//! then live.
//!
//! `cargo run -p murmur-client --example tail -- SOCKET PATTERN [COUNT]`: SOCKET is the
//! daemon's socket (`murmur.sock` in its data directory), COUNT stops after that many
//! events (default: run until the daemon closes the stream).

use futures_util::StreamExt;
use murmur_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(pattern)) = (args.next(), args.next()) else {
        eprintln!("usage: tail SOCKET PATTERN [COUNT]");
        std::process::exit(2);
    };
    let count: usize = args.next().map_or(Ok(usize::MAX), |c| c.parse())?;
    let mut client = Client::new(socket.as_ref());
    let status = client.status().await?;
    println!("node {} holds {} events", status.author, status.events);
    let mut events = client.follow(&pattern, Some(0)).await?;
    let mut seen = 0;
    while seen < count {
        let Some(event) = events.next().await else {
            break;
        };
        let event = event?;
        println!(
            "{:>8} {} #{} {}",
            event.offset.unwrap_or_default(),
            event.topic,
            event.seq,
            event.data
        );
        seen += 1;
    }
    Ok(())
}
