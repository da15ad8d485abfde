//! Anonymous shared files (memfd) with seals: the snapshot pool, the control block and the
//! pin table all live in one each.
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use memfd::{FileSeal, MemfdOptions};
use nix::fcntl::{fallocate, FallocateFlags};

/// A memfd, or another process's memfd received over the endpoint socket.
#[derive(Debug)]
pub struct SharedFile {
    file: File,
}

impl SharedFile {
    /// A new, empty, sealable memfd named `name` (the name is only a label in /proc).
    pub fn create(name: &str) -> std::io::Result<SharedFile> {
        let memfd =
            MemfdOptions::default().close_on_exec(true).allow_sealing(true).create(name).map_err(memfd_error)?;
        Ok(SharedFile { file: memfd.into_file() })
    }

    /// Another descriptor of the same open file description.
    pub fn try_clone(&self) -> std::io::Result<SharedFile> {
        Ok(SharedFile { file: self.file.try_clone()? })
    }

    pub fn from_file(file: File) -> SharedFile {
        SharedFile { file }
    }

    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    /// The file's size in bytes.
    pub fn size(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Seals a file only the producer writes: it can never shrink (no mapping of it loses
    /// its pages) and no further seal can be added. Unless `may_punch`, no new writable
    /// mapping or `write(2)` is allowed either (`F_SEAL_FUTURE_WRITE`; the mappings that exist
    /// stay writable) and the size is fixed. The kernel counts a hole punch as a write, so a
    /// file that returns memory with [`SharedFile::punch_hole`] cannot have that seal.
    ///
    /// The file's mode becomes 0400 as well, so that a read-only descriptor cannot be
    /// reopened for writing through /proc by mistake.
    pub fn seal_for_observers(&self, may_punch: bool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        let mut seals = vec![FileSeal::SealShrink];
        if !may_punch {
            seals.extend([FileSeal::SealGrow, FileSeal::SealFutureWrite]);
        }
        seals.push(FileSeal::SealSeal);
        self.seal(&seals)
    }

    /// Seals the size of a file observers may write (the pin table): it can neither shrink
    /// nor grow, and no further seal can be added.
    pub fn seal_size(&self) -> std::io::Result<()> {
        self.seal(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
    }

    /// Whether the file can never shrink: an observer maps only files sealed so, because a
    /// file that shrinks under a mapping turns reads of it into SIGBUS.
    pub fn cannot_shrink(&self) -> bool {
        memfd::Memfd::try_from_file(match self.file.try_clone() {
            Ok(f) => f,
            Err(_) => return false,
        })
        .ok()
        .and_then(|m| m.seals().ok())
        .is_some_and(|seals| seals.contains(&FileSeal::SealShrink))
    }

    fn seal(&self, seals: &[FileSeal]) -> std::io::Result<()> {
        let memfd =
            memfd::Memfd::try_from_file(self.file.try_clone()?).map_err(|_| std::io::Error::other("not a memfd"))?;
        for seal in seals {
            memfd.add_seal(*seal).map_err(memfd_error)?;
        }
        Ok(())
    }

    /// A new open file description of the same file, read-only or read-write.
    ///
    /// Read-only descriptions are what observers receive: through them the file can be
    /// mapped only `PROT_READ` and can be neither written nor resized. A fresh description
    /// also owns its own OFD locks.
    pub fn reopen(&self, writable: bool) -> std::io::Result<SharedFile> {
        let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(SharedFile { file })
    }

    /// Returns the pages of `[offset, offset + len)` to the kernel; they read as zero after.
    pub fn punch_hole(&self, offset: u64, len: u64) -> nix::Result<()> {
        fallocate(
            &self.file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    }

    /// Bytes of memory the file holds now (its allocated blocks), as the kernel counts them.
    pub fn allocated_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

impl AsFd for SharedFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn memfd_error(e: memfd::Error) -> std::io::Error {
    match e {
        memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => e,
    }
}
