//! `--leader-file`: the `/leader` document mirrored to a file, for applications that read a
//! shared volume instead of HTTP.
//!
//! Each change is written to a temporary file in the same directory and renamed over the
//! target, so a reader always sees a whole document, the old one or the new one.

use std::path::{Path, PathBuf};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::leadership::Receiver;

/// Keep `path` equal to the current `/leader` document until `stop` fires or the election
/// ends. On exit the file says "not leader" (the last snapshot is a stopping one).
pub async fn mirror(path: PathBuf, mut leadership: Receiver, stop: CancellationToken) {
    let mut last: Option<String> = None;
    loop {
        let snapshot = leadership.borrow_and_update().clone();
        match serde_json::to_string(&snapshot.leader_doc(Instant::now())) {
            Ok(doc) if last.as_ref() != Some(&doc) => match write_atomically(&path, &doc).await {
                Ok(()) => last = Some(doc),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the leader file")
                }
            },
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "encoding the leader document failed"),
        }
        tokio::select! {
            changed = leadership.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

async fn write_atomically(path: &Path, doc: &str) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    tokio::fs::write(&tmp, format!("{doc}\n")).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader.json");
        write_atomically(&path, "{\"a\":1}").await.unwrap();
        write_atomically(&path, "{\"a\":2}").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":2}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
