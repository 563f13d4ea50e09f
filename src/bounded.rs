//! Bounded reads: every file and HTTP body the operator and CLI read goes through here, so a
//! FIFO, `/dev/zero`, a 200 MB sysfs file or a response that never ends costs at most the limit
//! (and, for HTTP, the deadline) before a clear error.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;

/// A file given on the command line (`-f`, `--inventory`, `--pods`, engine overrides): a
/// `kubectl get nodes -o yaml` of 5,000 nodes is about 100 MiB.
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not a regular file (FIFO, device, socket, directory).
    #[error("{path}: not a regular file ({kind}); only regular files are read")]
    NotRegular {
        /// File.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// Over the limit.
    #[error("{what}: more than {limit} bytes; refusing to read further")]
    TooLarge {
        /// File or URL.
        what: String,
        /// Bytes allowed.
        limit: u64,
    },
    /// The deadline passed.
    #[error("{what}: no complete answer within {}s", deadline.as_secs_f32())]
    Deadline {
        /// URL.
        what: String,
        /// The deadline.
        deadline: Duration,
    },
    /// An I/O or network error.
    #[error("{what}: {message}")]
    Io {
        /// File or URL.
        what: String,
        /// Cause.
        message: String,
    },
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads a regular file (symlinks followed) of at most `limit` bytes. The type is checked
/// before opening (opening a FIFO would block) and again on the open handle.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let what = path.display().to_string();
    let io = |e: std::io::Error| ReadError::Io { what: what.clone(), message: e.to_string() };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular { path: what, kind: kind_of(meta.file_type()) });
    }
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular { path: what, kind: kind_of(meta.file_type()) });
    }
    let mut buf = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge { what, limit });
    }
    Ok(buf)
}

/// A small text file (sysfs attribute, procfs table) as UTF-8 (lossy), at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    read_file(path, limit).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Sends `request` and reads the whole body, refusing more than `limit` bytes (by the declared
/// `Content-Length` before any byte, else while streaming), all within `deadline`.
pub async fn fetch(
    request: reqwest::RequestBuilder,
    what: &str,
    limit: u64,
    deadline: Duration,
) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), ReadError> {
    fetch_with(request, what, limit, limit, deadline).await
}

/// [`fetch`] with one limit for a success body and another for an error body (read only for
/// its message).
pub async fn fetch_with(
    request: reqwest::RequestBuilder,
    what: &str,
    ok_limit: u64,
    error_limit: u64,
    deadline: Duration,
) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), ReadError> {
    let work = async {
        let resp = request.send().await.map_err(|e| ReadError::Io { what: what.to_string(), message: chain(&e) })?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let limit = if status.is_success() { ok_limit } else { error_limit };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(ReadError::TooLarge { what: what.to_string(), limit });
        }
        let mut body = vec![];
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ReadError::Io { what: what.to_string(), message: chain(&e) })?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(ReadError::TooLarge { what: what.to_string(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    };
    tokio::time::timeout(deadline, work).await.unwrap_or(Err(ReadError::Deadline { what: what.to_string(), deadline }))
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_fifos_are_refused_before_a_byte_is_read() {
        let e = read_file(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let dir = std::env::temp_dir().join(format!("oim-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.yaml");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            // Opening a FIFO with no writer would block forever; this returns at once.
            let e = read_file(&fifo, 1024).unwrap_err();
            assert!(e.to_string().contains("a FIFO"), "{e}");
        }
        let link = dir.join("zero.yaml");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(read_file(&link, 1024), Err(ReadError::NotRegular { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_at_the_limit_is_read() {
        let dir = std::env::temp_dir().join(format!("oim-bounded-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("big");
        std::fs::write(&f, vec![b'x'; 101]).unwrap();
        assert!(read_file(&f, 100).unwrap_err().to_string().contains("more than 100 bytes"));
        assert_eq!(read_file(&f, 101).unwrap().len(), 101);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
