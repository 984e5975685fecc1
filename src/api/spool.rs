//! A disk-backed queue of answer records between a bulk import and its response.
//!
//! Most HTTP clients send a whole request body before they read any of the answer. With an
//! in-memory channel, an import's answers would either stall the import (and so the upload:
//! a deadlock) or grow memory without bound. The spool lets the import run at full speed,
//! keeps memory flat, and still streams answers to a client that reads as it sends.

use std::{fs::File, io, os::unix::fs::FileExt, sync::Arc};

use axum::body::Bytes;
use tokio::sync::watch;

/// Written answers are flushed to the file at this size (and at every checkpoint).
const FLUSH_AT: usize = 64 * 1024;
/// The most one read takes from the file.
const READ_AT_MOST: usize = 256 * 1024;

/// How much of the file holds whole records, and whether the writer is done.
#[derive(Clone, Copy, Default)]
struct Progress {
    written: u64,
    finished: bool,
}

pub struct SpoolWriter {
    file: Arc<File>,
    buffer: Vec<u8>,
    written: u64,
    progress: watch::Sender<Progress>,
}

pub struct SpoolReader {
    file: Arc<File>,
    read: u64,
    progress: watch::Receiver<Progress>,
    /// Bytes read past the last whole record.
    partial: Vec<u8>,
}

/// A spool in an anonymous temporary file (gone when both ends are dropped).
pub fn spool() -> io::Result<(SpoolWriter, SpoolReader)> {
    let file = Arc::new(tempfile::tempfile()?);
    let (progress, watcher) = watch::channel(Progress::default());
    Ok((
        SpoolWriter {
            file: file.clone(),
            buffer: Vec::with_capacity(FLUSH_AT),
            written: 0,
            progress,
        },
        SpoolReader {
            file,
            read: 0,
            progress: watcher,
            partial: Vec::new(),
        },
    ))
}

impl SpoolWriter {
    /// Appends one record; it becomes readable at the next [`SpoolWriter::checkpoint`].
    pub fn push(&mut self, record: &[u8]) -> io::Result<()> {
        let length = u32::try_from(record.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        self.buffer.extend_from_slice(&length.to_le_bytes());
        self.buffer.extend_from_slice(record);
        if self.buffer.len() >= FLUSH_AT {
            self.write_out()?;
        }
        Ok(())
    }

    /// Makes every pushed record readable.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.progress.send_replace(Progress {
            written: self.written,
            finished: false,
        });
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.write_out()?;
        self.progress.send_replace(Progress {
            written: self.written,
            finished: true,
        });
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        // Page-cache writes of at most FLUSH_AT bytes: short enough to do in place.
        self.file.write_all_at(&self.buffer, self.written)?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl SpoolReader {
    /// The next records that are readable, waiting for the writer if needed; `None` once the
    /// writer has finished (or was dropped) and everything it made readable has been read.
    pub async fn next_records(&mut self) -> Option<io::Result<Vec<Bytes>>> {
        loop {
            let progress = *self.progress.borrow_and_update();
            if self.read < progress.written {
                return Some(self.read_records(progress.written));
            }
            if progress.finished || self.progress.changed().await.is_err() {
                // A dropped writer is an ended import: everything it checkpointed was read.
                let progress = *self.progress.borrow();
                if self.read < progress.written {
                    continue;
                }
                return None;
            }
        }
    }

    fn read_records(&mut self, written: u64) -> io::Result<Vec<Bytes>> {
        let available = usize::try_from(written - self.read).unwrap_or(READ_AT_MOST);
        let mut chunk = vec![0u8; available.min(READ_AT_MOST)];
        self.file.read_exact_at(&mut chunk, self.read)?;
        self.read += chunk.len() as u64;
        self.partial.extend_from_slice(&chunk);
        let mut records = Vec::new();
        let mut at = 0;
        while let Some(header) = self.partial.get(at..at + 4) {
            let mut length = [0u8; 4];
            length.copy_from_slice(header);
            let end = at + 4 + u32::from_le_bytes(length) as usize;
            let Some(record) = self.partial.get(at + 4..end) else {
                break;
            };
            records.push(Bytes::copy_from_slice(record));
            at = end;
        }
        self.partial.drain(..at);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_come_out_in_order_across_flushes_and_partial_reads() {
        let (mut writer, mut reader) = spool().unwrap();
        let records: Vec<Vec<u8>> = (0..20_000)
            .map(|n| format!("record {n} {}", "x".repeat(n % 97)).into_bytes())
            .collect();
        let expected = records.clone();
        let writing = tokio::spawn(async move {
            for (n, record) in records.iter().enumerate() {
                writer.push(record).unwrap();
                if n % 1000 == 0 {
                    writer.checkpoint().unwrap();
                    tokio::task::yield_now().await;
                }
            }
            writer.finish().unwrap();
        });
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_records().await {
            seen.extend(batch.unwrap().into_iter().map(|bytes| bytes.to_vec()));
        }
        writing.await.unwrap();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_dropped_writer_ends_the_reader_after_its_checkpointed_records() {
        let (mut writer, mut reader) = spool().unwrap();
        writer.push(b"kept").unwrap();
        writer.checkpoint().unwrap();
        writer.push(b"never checkpointed").unwrap();
        drop(writer);
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_records().await {
            seen.extend(batch.unwrap());
        }
        assert_eq!(seen, vec![Bytes::from_static(b"kept")]);
    }
}
