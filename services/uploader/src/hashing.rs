//! A reader that hashes what passes through it, so a file is checksummed in the same
//! single pass that uploads it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// The digest of everything read so far, readable after the reader is consumed.
#[derive(Clone, Default)]
pub struct SharedDigest(Arc<Mutex<Sha256>>);

impl SharedDigest {
    /// Lowercase hex SHA-256 of the bytes read.
    pub fn hex(&self) -> String {
        hex::encode(self.0.lock().expect("digest lock").clone().finalize())
    }
}

/// Wraps a reader and hashes every byte read.
pub struct HashingReader<R> {
    inner: R,
    digest: SharedDigest,
}

impl<R> HashingReader<R> {
    /// The reader and a handle to its digest.
    pub fn new(inner: R) -> (Self, SharedDigest) {
        let digest = SharedDigest::default();
        (
            HashingReader {
                inner,
                digest: digest.clone(),
            },
            digest,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let new = &buf.filled()[before..];
            self.digest.0.lock().expect("digest lock").update(new);
        }
        poll
    }
}
