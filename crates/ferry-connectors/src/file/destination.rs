//! The file destination: one file per message in a local directory.
//!
//! Each message is written to a hidden temporary file, fsync'd, then renamed to its final name
//! and the directory fsync'd, so a reader never sees a half-written file and a crash never leaves
//! one behind under the final name. The default name `{channel}-{id}.hl7` is unique per message,
//! so a resend after a crash rewrites the same file instead of adding a duplicate.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ferry_engine::{Destination, Outbound, SendFuture, SendOutcome};

/// Writes messages as files.
#[derive(Debug, Clone)]
pub struct FileDestination {
    directory: PathBuf,
    file_name: String,
}

impl FileDestination {
    /// Write into `directory` (created on first use) with names from `file_name`, where
    /// `{channel}`, `{id}` and `{control_id}` are replaced (unsafe characters become `_`).
    pub fn new(directory: PathBuf, file_name: String) -> FileDestination {
        FileDestination {
            directory,
            file_name,
        }
    }

    fn name_for(&self, message: &Outbound) -> String {
        let control_id = message.control_id.as_deref().unwrap_or("none");
        let name = self
            .file_name
            .replace("{channel}", &message.channel)
            .replace("{id}", &message.message_id.to_string())
            .replace("{control_id}", control_id);
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    fn write(&self, message: &Outbound) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.directory)?;
        let name = self.name_for(message);
        let final_path = self.directory.join(&name);
        let temp_path = self.directory.join(format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&temp_path)?;
        file.write_all(&message.payload)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp_path, &final_path)?;
        sync_dir(&self.directory)?;
        Ok(final_path)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Destination for FileDestination {
    fn send<'a>(&'a self, message: &'a Outbound) -> SendFuture<'a> {
        Box::pin(async move {
            let this = self.clone();
            let message = message.clone();
            match tokio::task::spawn_blocking(move || this.write(&message)).await {
                Ok(Ok(path)) => SendOutcome::Sent {
                    response: Some(path.display().to_string().into_bytes()),
                },
                Ok(Err(error)) => SendOutcome::Retry {
                    reason: format!("writing to {} failed: {error}", self.directory.display()),
                    response: None,
                },
                Err(error) => SendOutcome::Retry {
                    reason: format!("file writer task failed: {error}"),
                    response: None,
                },
            }
        })
    }
}
