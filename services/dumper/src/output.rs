//! A job's dump files in the spool: compressed and SHA-256'd in the one pass that
//! writes them, handed to the configured spool and announced with `DumpFileReady`
//! the moment each is complete, so the uploader can start on a table while the next
//! one is still being dumped.
//!
//! Compression is CPU work, so it runs on blocking threads: an [`OutputFile`]
//! gathers its bytes into 1 MiB chunks and hands them, without copying, over a
//! two-chunk channel to one, and [`JobOutput::ingest`] reads a finished file on one.
//! Memory per file is a few chunks plus the encoder's window, whatever the size of
//! the data.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{DumpFile, DumpFileReady, JobRequested, SpoolLocation};
use ferry_runtime::{JobContext, Outgoing, msg_id};
use ferry_storage::spool::Spool;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

/// Bytes an [`OutputFile`] gathers before handing them to its compressing thread;
/// documents and rows are often tiny, and a hand-over per write would cost more
/// than the copy into the chunk.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks waiting for the compressing thread; a full queue makes the writer wait.
const CHUNKS_QUEUED: usize = 2;
/// Read size when ingesting a finished file, and the output buffer's size.
const CHUNK: usize = 256 * 1024;

/// How dump files are compressed in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at `level` (1-22; 1-3 are fast and still shrink dumps well).
    Zstd {
        /// The zstd level.
        level: i32,
    },
    /// gzip at `level` (0-9), for tools that only read gzip.
    Gzip {
        /// The gzip level.
        level: u32,
    },
    /// Stored as produced.
    None,
}

impl Compression {
    /// "zstd" | "gzip" | "none" (the DumpFile.compression value).
    pub fn name(&self) -> &'static str {
        match self {
            Compression::Zstd { .. } => "zstd",
            Compression::Gzip { .. } => "gzip",
            Compression::None => "none",
        }
    }

    /// File-name suffix: ".zst" | ".gz" | "".
    pub fn suffix(&self) -> &'static str {
        match self {
            Compression::Zstd { .. } => ".zst",
            Compression::Gzip { .. } => ".gz",
            Compression::None => "",
        }
    }

    /// An encoder writing compressed bytes into `out`; zstd with `workers` > 1
    /// compresses on that many threads (one frame still: any zstd reads it).
    fn encoder<W: Write + Send + 'static>(
        &self,
        out: W,
        workers: u32,
    ) -> std::io::Result<Box<dyn Encoder<W> + Send>> {
        Ok(match *self {
            Compression::Zstd { level } => {
                let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
                if workers > 1 {
                    encoder.multithread(workers)?;
                }
                Box::new(encoder)
            }
            Compression::Gzip { level } => Box::new(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(level.min(9)),
            )),
            Compression::None => Box::new(Plain(out)),
        })
    }
}

/// A compressing writer that can be finished to get its inner writer back.
trait Encoder<W>: Write {
    fn finish_encoding(self: Box<Self>) -> std::io::Result<W>;
}

impl<W: Write> Encoder<W> for zstd::stream::write::Encoder<'static, W> {
    fn finish_encoding(self: Box<Self>) -> std::io::Result<W> {
        (*self).finish()
    }
}

impl<W: Write> Encoder<W> for flate2::write::GzEncoder<W> {
    fn finish_encoding(self: Box<Self>) -> std::io::Result<W> {
        (*self).finish()
    }
}

struct Plain<W>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Encoder<W> for Plain<W> {
    fn finish_encoding(self: Box<Self>) -> std::io::Result<W> {
        Ok(self.0)
    }
}

/// Counts and hashes the bytes written to the spool file: the checksum is of the
/// file as stored.
struct HashingFile {
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Hands one job's finished files to the spool the uploader reads ([`Spool::put_file`]:
/// nothing to do for the directory spool, a copy into the bucket for the NATS spool)
/// and publishes DumpFileReady for each (subject ferry.v1.events.file_ready.<source>,
/// msg id [`msg_id::file_ready`]), through the job's [`JobContext::emit`].
#[derive(Clone)]
pub struct Announcer {
    ctx: JobContext,
    spool: Arc<dyn Spool>,
    job_id: String,
    source: String,
    backup_id: String,
    location: SpoolLocation,
}

impl Announcer {
    /// Announces the files of `job`, which the dumper hands to `spool`; `location`
    /// is where events say they are.
    pub fn new(
        ctx: JobContext,
        spool: Arc<dyn Spool>,
        job: &JobRequested,
        location: SpoolLocation,
    ) -> Self {
        Announcer {
            ctx,
            spool,
            job_id: job.job_id.clone(),
            source: job.source.clone(),
            backup_id: job.backup_id.clone(),
            location,
        }
    }

    /// Moves the finished local file `local` into the spool as `file`, then
    /// announces it. The spool's failure fails the file (the uploader could never
    /// read it); the announcement's does not.
    pub async fn hand_over(&self, file: &DumpFile, local: &Path) -> std::io::Result<()> {
        self.spool
            .put_file(&self.job_id, &file.name, local)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot hand {} over to the spool ({}): {e}",
                        file.name,
                        self.spool.describe()
                    ),
                )
            })?;
        self.announce(file).await;
        Ok(())
    }

    /// Publishes that `file` is complete. A failure is logged, not returned: the
    /// announcement only lets the uploader start early, and `DumpCompleted` lists
    /// every file anyway, so a NATS hiccup must not fail an hours-long dump.
    async fn announce(&self, file: &DumpFile) {
        let event = DumpFileReady {
            job_id: self.job_id.clone(),
            source: self.source.clone(),
            occurred_at: Some(ferry_proto::now()),
            backup_id: self.backup_id.clone(),
            file: Some(file.clone()),
            spool: Some(self.location.clone()),
        };
        let out = Outgoing::event(
            EventKind::FileReady,
            &self.source,
            &event,
            msg_id::file_ready(&self.job_id, &file.name),
        );
        if let Err(e) = self.ctx.emit(&out).await {
            tracing::warn!(file = %file.name, error = %ferry_runtime::error_chain(&e), "announcing a finished dump file failed; the uploader will find it in DumpCompleted");
        }
    }
}

/// One job's dump files: compresses and hashes them as they stream into the spool,
/// and announces each with `DumpFileReady` the moment it is complete.
#[derive(Clone)]
pub struct JobOutput {
    inner: Arc<Inner>,
}

struct Inner {
    job_dir: PathBuf,
    compression: Compression,
    announce: Option<Announcer>,
    files: Mutex<Vec<DumpFile>>,
}

impl JobOutput {
    /// `announce` hands each finished file to the spool and publishes DumpFileReady
    /// (None when the files stay where they are written: tests and benchmarks).
    pub fn new(job_dir: PathBuf, compression: Compression, announce: Option<Announcer>) -> Self {
        JobOutput {
            inner: Arc::new(Inner {
                job_dir,
                compression,
                announce,
                files: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The job's directory in the spool.
    pub fn job_dir(&self) -> &Path {
        &self.inner.job_dir
    }

    /// The compression applied to every file.
    pub fn compression(&self) -> Compression {
        self.inner.compression
    }

    /// Opens `name` (relative, `/`-separated, e.g. `shop/items.bson`); the stored
    /// name gets the compression suffix. Cheap to call from several tasks at once.
    pub async fn create(&self, name: &str) -> std::io::Result<OutputFile> {
        self.create_with_workers(name, 1).await
    }

    /// [`Self::create`] for one large stream that is the job's only work (a
    /// physical base backup): zstd compresses it on `workers` threads, as
    /// `zstd -T0` would, instead of one.
    pub async fn create_with_workers(
        &self,
        name: &str,
        workers: u32,
    ) -> std::io::Result<OutputFile> {
        let (stored, path) = self.target(name)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let (sender, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_QUEUED);
        // Compressed chunks come back to be filled again: a fresh 1 MiB buffer is a
        // fresh mapping whose pages the kernel must fault in and zero.
        let (give_back, recycled) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_QUEUED + 1);
        let compression = self.inner.compression;
        let task = tokio::task::spawn_blocking(move || {
            let mut compressor = Compressor::create(&path, compression, workers)?;
            // Blocking on the channel is what a blocking-pool thread is for.
            while let Some(mut chunk) = chunks.blocking_recv() {
                compressor.write(&chunk)?;
                chunk.clear();
                let _ = give_back.try_send(chunk);
            }
            compressor.finish()
        });
        Ok(OutputFile {
            chunk: Vec::with_capacity(CHUNK_BYTES),
            recycled,
            sender: Some(PollSender::new(sender)),
            task: Some(task),
            early: None,
            stored,
            output: self.clone(),
        })
    }

    /// Compresses everything `input` yields into the spool as `name` on a blocking
    /// thread that reads and compresses itself (zstd on `workers` threads), the
    /// way `zstd -T0` reads a pipe: no hop through the async runtime per chunk.
    /// `inspect` sees every chunk first. For one large stream that is the job's
    /// only work (a physical base backup from pg_basebackup's stdout).
    pub async fn copy_from<R, F>(
        &self,
        name: &str,
        mut input: R,
        workers: u32,
        mut inspect: F,
    ) -> std::io::Result<DumpFile>
    where
        R: Read + Send + 'static,
        F: FnMut(&[u8]) + Send + 'static,
    {
        let (stored, path) = self.target(name)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let compression = self.inner.compression;
        let (size, sha256) = tokio::task::spawn_blocking(move || {
            let mut compressor = Compressor::create(&path, compression, workers)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        inspect(&buf[..n]);
                        compressor.write(&buf[..n])?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            compressor.finish()
        })
        .await
        .map_err(std::io::Error::other)??;
        self.record(stored, size, sha256).await
    }

    /// Compresses an already complete local file (e.g. one pg_dump closed) into the
    /// spool as `name`, then removes `src`.
    pub async fn ingest(&self, name: &str, src: &Path) -> std::io::Result<DumpFile> {
        let (stored, path) = self.target(name)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let compression = self.inner.compression;
        let src_owned = src.to_path_buf();
        let (size, sha256) = tokio::task::spawn_blocking(move || {
            let mut input = std::fs::File::open(&src_owned)?;
            let mut compressor = Compressor::create(&path, compression, 1)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => compressor.write(&buf[..n])?,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let result = compressor.finish()?;
            // Remove the staged copy at once: the staging area then never holds
            // more than the files pg_dump is still writing.
            std::fs::remove_file(&src_owned)?;
            Ok::<_, std::io::Error>(result)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.record(stored, size, sha256).await
    }

    /// Every file finished so far, in completion order.
    pub fn files(&self) -> Vec<DumpFile> {
        self.inner.files.lock().expect("files lock").clone()
    }

    fn target(&self, name: &str) -> std::io::Result<(String, PathBuf)> {
        let valid = !name.is_empty()
            && !name.starts_with('/')
            && name.split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && !part.contains('\\')
            });
        if !valid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("dump file name {name:?} is not a relative /-separated path"),
            ));
        }
        let stored = format!("{name}{}", self.inner.compression.suffix());
        let path = self.inner.job_dir.join(&stored);
        Ok((stored, path))
    }

    async fn record(&self, name: String, size: u64, sha256: String) -> std::io::Result<DumpFile> {
        let file = DumpFile {
            name,
            size,
            sha256,
            compression: self.inner.compression.name().into(),
        };
        if let Some(announcer) = &self.inner.announce {
            announcer
                .hand_over(&file, &self.inner.job_dir.join(&file.name))
                .await?;
        }
        self.inner
            .files
            .lock()
            .expect("files lock")
            .push(file.clone());
        Ok(file)
    }
}

/// A new spool file being compressed and hashed.
struct Compressor {
    encoder: Box<dyn Encoder<std::io::BufWriter<HashingFile>> + Send>,
}

impl Compressor {
    fn create(path: &Path, compression: Compression, workers: u32) -> std::io::Result<Self> {
        let sink = HashingFile {
            file: std::fs::File::create(path)?,
            hasher: Sha256::new(),
            size: 0,
        };
        Ok(Compressor {
            encoder: compression
                .encoder(std::io::BufWriter::with_capacity(CHUNK, sink), workers)?,
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.encoder.write_all(data)
    }

    /// Ends the stream and fsyncs the file; returns its stored size and SHA-256.
    fn finish(self) -> std::io::Result<(u64, String)> {
        let sink = self
            .encoder
            .finish_encoding()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        sink.file.sync_all()?;
        Ok((sink.size, hex::encode(sink.hasher.finalize())))
    }
}

/// Implements tokio::io::AsyncWrite; bytes are compressed and SHA-256'd as written.
pub struct OutputFile {
    /// Bytes not yet handed to the compressing thread.
    chunk: Vec<u8>,
    /// None once the input is complete.
    sender: Option<PollSender<Vec<u8>>>,
    /// Emptied chunks the compressing thread gave back.
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
    task: Option<JoinHandle<std::io::Result<(u64, String)>>>,
    /// The compressing thread's result once it ended early (e.g. the disk filled).
    early: Option<std::io::Error>,
    stored: String,
    output: JobOutput,
}

impl OutputFile {
    /// Flushes, fsyncs, records the file and publishes DumpFileReady; returns it.
    pub async fn finish(mut self) -> std::io::Result<DumpFile> {
        if let Some(e) = self.early.take() {
            return Err(e);
        }
        // Closing the channel is the end of input for the compressing thread.
        self.shutdown().await?;
        let task = self.task.take().expect("the task is awaited once");
        let (size, sha256) = task.await.map_err(std::io::Error::other)??;
        self.output.record(self.stored, size, sha256).await
    }

    /// Hands the gathered chunk to the compressing thread, waiting while its queue
    /// is full.
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let Some(sender) = self.sender.as_mut() else {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the file was already shut down",
            )));
        };
        let sent = match std::task::ready!(sender.poll_reserve(cx)) {
            Ok(()) => {
                let next = self
                    .recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES));
                let chunk = std::mem::replace(&mut self.chunk, next);
                sender.send_item(chunk).is_ok()
            }
            Err(_) => false,
        };
        if sent {
            return Poll::Ready(Ok(()));
        }
        let closed = std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the compressing thread stopped",
        );
        self.poll_thread_error(cx, closed).map(Err)
    }

    /// The channel closed because the compressing thread stopped: wait for it and
    /// return its error (say, "No space left on device") rather than a bare broken
    /// pipe.
    fn poll_thread_error(
        &mut self,
        cx: &mut Context<'_>,
        pipe: std::io::Error,
    ) -> Poll<std::io::Error> {
        if let Some(task) = self.task.as_mut() {
            let result = std::task::ready!(Pin::new(task).poll(cx));
            self.task = None;
            let e = match result {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => pipe,
                Err(join) => std::io::Error::other(join),
            };
            self.early = Some(std::io::Error::new(e.kind(), e.to_string()));
            return Poll::Ready(e);
        }
        match &self.early {
            Some(e) => Poll::Ready(std::io::Error::new(e.kind(), e.to_string())),
            None => Poll::Ready(pipe),
        }
    }
}

impl AsyncWrite for OutputFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = &this.early {
            return Poll::Ready(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        if this.chunk.len() >= CHUNK_BYTES {
            std::task::ready!(this.poll_hand_over(cx))?;
        }
        let n = buf.len().min(CHUNK_BYTES - this.chunk.len());
        this.chunk.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_hand_over(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_hand_over(cx))?;
        if let Some(mut sender) = self.sender.take() {
            sender.close();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decompress(c: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            Compression::Zstd { .. } => {
                zstd::stream::read::Decoder::new(bytes)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Gzip { .. } => {
                flate2::read::GzDecoder::new(bytes)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::None => out = bytes.to_vec(),
        }
        out
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn written_and_ingested_files_round_trip_with_their_checksums() {
        for compression in [
            Compression::Zstd { level: 1 },
            Compression::Gzip { level: 6 },
            Compression::None,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let out = JobOutput::new(dir.path().join("job"), compression, None);
            let payload = data(3 * CHUNK_BYTES + 17);

            let mut file = out.create("db/a.dat").await.unwrap();
            file.write_all(&payload).await.unwrap();
            let written = file.finish().await.unwrap();

            let staged = dir.path().join("staged.dat");
            std::fs::write(&staged, &payload).unwrap();
            let ingested = out.ingest("db/b.dat", &staged).await.unwrap();
            assert!(!staged.exists(), "the staged file is removed");

            for f in [&written, &ingested] {
                assert!(f.name.ends_with(&format!(".dat{}", compression.suffix())));
                assert_eq!(f.compression, compression.name());
                let stored = std::fs::read(out.job_dir().join(&f.name)).unwrap();
                assert_eq!(stored.len() as u64, f.size);
                assert_eq!(hex::encode(Sha256::digest(&stored)), f.sha256);
                assert_eq!(decompress(compression, &stored), payload);
            }
            let names: Vec<_> = out.files().into_iter().map(|f| f.name).collect();
            assert_eq!(names, vec![written.name, ingested.name]);
        }
    }

    #[tokio::test]
    async fn names_that_escape_the_job_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = JobOutput::new(dir.path().to_path_buf(), Compression::None, None);
        for bad in ["", "/etc/passwd", "../x", "a//b", "a/./b"] {
            let err = out.create(bad).await.err().expect(bad);
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_failing_spool_write_reports_the_real_error() {
        // /dev/full fails every write with "No space left on device": the error the
        // writer sees must be that, not a broken pipe.
        let out = JobOutput::new(PathBuf::from("/dev"), Compression::None, None);
        let (_, path) = out.target("full").unwrap();
        assert_eq!(path, Path::new("/dev/full"));
        let mut file = out.create("full").await.unwrap();
        let payload = data(4 * CHUNK_BYTES);
        let err = match file.write_all(&payload).await {
            Err(e) => e,
            Ok(()) => file.finish().await.unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }
}
