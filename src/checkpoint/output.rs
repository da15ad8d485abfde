//! Writing a restore's output directory all at once: into a hidden temporary directory next
//! to it, synced, then renamed into place. A restore that fails (or is killed) leaves no
//! directory under the output's name that could be taken for a result.
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::CheckpointError;

/// Calls `fill` with a fresh temporary directory beside `out`, then syncs what it wrote and
/// renames it to `out`. `out` may not exist, or be empty, or hold an earlier result (a
/// `manifest.json` at its top), which is replaced; anything else is refused, untouched. On
/// error the temporary directory is removed.
pub fn write_dir<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T, CheckpointError>) -> Result<T, CheckpointError> {
    let name = out.file_name().and_then(|n| n.to_str()).filter(|n| *n != "." && *n != "..").ok_or_else(|| {
        CheckpointError::BadOutput {
            dir: out.to_path_buf(),
            what: "name a directory to create, such as restored/".into(),
        }
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let earlier = replaceable(out)?;
    let temp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&temp);
    fs::create_dir_all(&temp).map_err(CheckpointError::io("creating", &temp))?;
    let result = fill(&temp).and_then(|value| {
        sync_tree(&temp)?;
        if earlier {
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            fs::rename(out, &old).map_err(CheckpointError::io("moving aside", out))?;
            fs::rename(&temp, out).map_err(CheckpointError::io("renaming to", out))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&temp, out).map_err(CheckpointError::io("renaming to", out))?;
        }
        File::open(&parent).and_then(|d| d.sync_all()).map_err(CheckpointError::io("syncing", &parent))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&temp);
    }
    result
}

/// Whether `out` holds an earlier result to replace (`false`: it is absent or empty, and a
/// rename puts the new one there). Refuses anything else.
fn replaceable(out: &Path) -> Result<bool, CheckpointError> {
    super::refuse_non_directory(out)?;
    let entries = match fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CheckpointError::io("listing", out)(e)),
    };
    if entries.count() == 0 {
        return Ok(false);
    }
    if out.join("manifest.json").is_file() {
        return Ok(true);
    }
    Err(CheckpointError::BadOutput {
        dir: out.to_path_buf(),
        what: "exists and is not the output of an earlier restore (no manifest.json); name a new directory".into(),
    })
}

/// Syncs every file of `dir` (one level) and `dir` itself.
fn sync_tree(dir: &Path) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(CheckpointError::io("listing", dir))? {
        let path = entry.map_err(CheckpointError::io("listing", dir))?.path();
        if path.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(CheckpointError::io("syncing", &path))?;
        }
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(CheckpointError::io("syncing", dir))
}
