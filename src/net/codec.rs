//! The request-response codec: CBOR (ciborium) frames behind a 4-byte big-endian length, with
//! stated, settable size caps.
//!
//! A frame over its cap is refused before any of it is buffered, so a peer can make us hold at
//! most one cap's worth of bytes per stream. A malformed frame is an `InvalidData` I/O error:
//! request-response reports it as a failure of that one request, counted by the node, and
//! nothing reaches the protocol state.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The default cap of a request frame: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The default cap of a response frame: 4 MiB (a page of a sync).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// A [`request_response::Codec`](libp2p::request_response::Codec) for `Req` and `Resp`:
/// each message is one CBOR value behind its length as a `u32` (big-endian).
///
/// A frame read over its cap, cut short or not decodable is an error of that request or
/// response, and counted in [`malformed`](Self::malformed) (the stream is dropped by
/// request-response; nothing of it reaches the behaviour).
pub struct Codec<Req, Resp> {
    max_request_bytes: usize,
    max_response_bytes: usize,
    malformed: Arc<AtomicU64>,
    types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Codec<Req, Resp> {
    /// Sets the largest request frame accepted or sent, in bytes.
    pub fn set_request_size_maximum(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Sets the largest response frame accepted or sent, in bytes.
    pub fn set_response_size_maximum(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Counts the malformed frames it reads in `counter` (shared by its clones, which
    /// request-response makes per stream) instead of a counter of its own.
    pub fn count_malformed_in(mut self, counter: Arc<AtomicU64>) -> Self {
        self.malformed = counter;
        self
    }

    /// Frames refused on reading so far: over the cap, truncated or not decodable.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// The request cap.
    pub fn request_size_maximum(&self) -> usize {
        self.max_request_bytes
    }

    /// The response cap.
    pub fn response_size_maximum(&self) -> usize {
        self.max_response_bytes
    }
}

impl<Req, Resp> Default for Codec<Req, Resp> {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            malformed: Arc::default(),
            types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            malformed: self.malformed.clone(),
            types: PhantomData,
        }
    }
}

/// Encodes `value` as one frame (length prefix included), refusing a frame over `max`.
pub(crate) fn encode_frame<T: Serialize>(value: &T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    ciborium::into_writer(value, &mut buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let len = buf.len() - 4;
    if len > max || len > u32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the cap of {max}"),
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes the body of a frame (without its length prefix).
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    ciborium::from_reader(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

async fn read_frame<T, R>(io: &mut R, max: usize, malformed: &AtomicU64) -> io::Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin + Send,
{
    // A stream that ends before its length is a closed stream, not a malformed frame.
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let result = read_body(io, u32::from_be_bytes(len) as usize, max).await;
    if result.is_err() {
        malformed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn read_body<T, R>(io: &mut R, len: usize, max: usize) -> io::Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin + Send,
{
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the cap of {max}"),
        ));
    }
    // Grows with the bytes that arrive, not with the length announced: a peer that
    // announces the cap and sends nothing holds no memory.
    let mut body = Vec::new();
    (&mut *io).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame of {len} bytes ended after {}", body.len()),
        ));
    }
    decode_body(&body)
}

async fn write_frame<T, W>(io: &mut W, value: &T, max: usize) -> io::Result<()>
where
    T: Serialize,
    W: AsyncWrite + Unpin + Send,
{
    let frame = encode_frame(value, max)?;
    io.write_all(&frame).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for Codec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request_bytes, &self.malformed).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response_bytes, &self.malformed).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request_bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &resp, self.max_response_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    const P: StreamProtocol = StreamProtocol::new("/test/1");

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn round_trip() {
        let mut codec = Codec::<Vec<u32>, String>::default();
        let mut buf = Vec::new();
        block(codec.write_request(&P, &mut Cursor::new(&mut buf), vec![1, 2, 3])).unwrap();
        let back = block(codec.read_request(&P, &mut Cursor::new(&buf))).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }

    #[test]
    fn refuses_a_frame_over_the_cap_before_reading_it() {
        let mut codec = Codec::<Vec<u8>, ()>::default().set_request_size_maximum(16);
        let mut frame = (1u32 << 30).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 8]);
        let err = block(codec.read_request(&P, &mut Cursor::new(&frame))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the cap"), "{err}");
        // Nor does it send one.
        let mut buf = Vec::new();
        let err =
            block(codec.write_request(&P, &mut Cursor::new(&mut buf), vec![7; 64])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn malformed_and_truncated_frames_are_errors() {
        let mut codec = Codec::<Vec<u32>, ()>::default();
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = block(codec.read_request(&P, &mut Cursor::new(&frame))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let truncated = 10u32.to_be_bytes();
        let err = block(codec.read_request(&P, &mut Cursor::new(&truncated[..]))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
