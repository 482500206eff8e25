//! The sync protocol over libp2p request-response: each protocol message is one request
//! (a length-prefixed frame, length checked before allocation), answered by a one-byte
//! acknowledgement. Messages are one-way notifications to the sans-IO machine; the
//! request-response layer gives us per-message substreams, timeouts and stream limits.

use std::io;

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use murmur_core::sync::Message;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/sync/1");

/// Codec for [`Message`] frames; counts frame bytes in and out.
#[derive(Debug, Clone, Default)]
pub struct SyncCodec {
    pub(crate) bytes: crate::Traffic,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Message;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Message>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut prefix = [0u8; 4];
        io.read_exact(&mut prefix).await?;
        let len = Message::frame_len(prefix).map_err(invalid)?;
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        self.bytes.add("in", 4 + len);
        Message::from_body(&body).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await?;
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        msg: Message,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let frame = msg.to_frame().map_err(invalid)?;
        io.write_all(&frame).await?;
        self.bytes.add("out", frame.len());
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[1]).await?;
        io.close().await
    }
}

/// The admission protocol's name: each side sends its credentials (a fleet membership
/// certificate) as a request right after the connection is made and answers the other
/// side's with its own.
pub const ADMIT_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/admit/1");

/// Largest credentials frame.
pub const MAX_CREDENTIALS: usize = 16 * 1024;

/// Codec for credentials: a 4-byte big-endian length (checked before allocating), then
/// the bytes; the same both ways. The bytes are the daemon's to judge.
#[derive(Debug, Clone, Default)]
pub struct AdmitCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_CREDENTIALS {
        return Err(invalid(format!(
            "credentials of {len} bytes; the limit is {MAX_CREDENTIALS}"
        )));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l as usize <= MAX_CREDENTIALS)
        .ok_or_else(|| invalid("credentials too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for AdmitCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}
