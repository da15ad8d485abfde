//! `PAGEMAP_SCAN` (Linux 6.7): find the pages written since they were write-protected and
//! write-protect them again, in one ioctl on `/proc/self/pagemap`. No crate covers it, so the
//! kernel's structs are declared here and checked against the uapi layout below.
use std::fs::File;
use std::os::fd::AsRawFd;

/// `struct page_region` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = {
    assert!(std::mem::size_of::<PageRegion>() == 24);
    assert!(std::mem::size_of::<PmScanArg>() == 96);
    assert!(std::mem::offset_of!(PmScanArg, walk_end) == 32);
    assert!(std::mem::offset_of!(PmScanArg, vec) == 40);
    assert!(std::mem::offset_of!(PmScanArg, category_mask) == 72);
    assert!(std::mem::offset_of!(PmScanArg, return_mask) == 88);
};

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: nix::sys::ioctl::ioctl_num_type =
    nix::request_code_readwrite!(b'f', 16, std::mem::size_of::<PmScanArg>());
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// A reusable scanner of this process's page tables.
pub struct Scanner {
    pagemap: File,
    regions: Vec<PageRegion>,
}

impl Scanner {
    pub fn open() -> std::io::Result<Scanner> {
        Ok(Scanner { pagemap: File::open("/proc/self/pagemap")?, regions: vec![PageRegion::default(); 1024] })
    }

    /// Reports every written run of pages in `[start, end)` (page-aligned addresses) to
    /// `found(start, end)` and write-protects those pages again, so the next call reports
    /// only what is written after this one. The range must be registered with an
    /// asynchronous write-protect userfaultfd, or the kernel refuses with `EPERM`.
    pub fn take_written(&mut self, start: usize, end: usize, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        self.scan(start, end, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, found)
    }

    /// As [`Scanner::take_written`], but leaves the pages writable: a page reported stays
    /// reported by every later scan until it is write-protected again. Cheaper: the kernel
    /// changes no page table entry and flushes no TLB.
    pub fn written(&mut self, start: usize, end: usize, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        self.scan(start, end, PM_SCAN_CHECK_WPASYNC, found)
    }

    fn scan(&mut self, start: usize, end: usize, flags: u64, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        let mut from = start as u64;
        while from < end as u64 {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: from,
                end: end as u64,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg for the duration of the call; `vec` points to
            // `vec_len` writable page_region entries owned by `self.regions`, which is not
            // touched until the ioctl returns. The kernel only reads (and, with
            // PM_SCAN_WP_MATCHING, re-protects) our own page tables in `[start, end)`.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            let n = nix::errno::Errno::result(n)? as usize;
            let regions = &self.regions[..n.min(self.regions.len())];
            for r in regions {
                found(r.start as usize, r.end as usize);
            }
            // Fewer runs than room for them: the walk reached `end`. The kernel's
            // `walk_end` may then lag behind what it reported (6.18 leaves it where its own
            // buffer last filled up: measured, 655 runs reported up to the range's last
            // chunk with `walk_end` 56 MiB before it), so it is not a place to go on from:
            // that re-walked part of the range and, without PM_SCAN_WP_MATCHING, reported
            // its runs twice.
            if n < self.regions.len() {
                break;
            }
            let next = arg.walk_end.max(regions.last().map_or(0, |r| r.end));
            if next <= from {
                return Err(nix::Error::EIO);
            }
            from = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_number_matches_the_uapi_header() {
        // From <linux/fs.h> on x86-64: PAGEMAP_SCAN == 0xc0606610.
        assert_eq!(super::PAGEMAP_SCAN, 0xc060_6610);
    }
}
