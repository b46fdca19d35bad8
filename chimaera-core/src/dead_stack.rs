//! Giving the memory of a coroutine stack that died of an overflow back to the kernel.
//!
//! A coroutine that runs into its guard page cannot be unwound (see [`crate::coroutine`]):
//! its stack is never resumed and never unmapped. Kept as it was, every overflow also kept
//! its whole stack resident, since the overflow touched every page on its way down (259
//! KiB per overflow of a 256 KiB stack, measured), so a client calling, again and again,
//! a handler that recurses on its input grew the runtime until the OOM killer ended it.
//!
//! [`release`] hands those pages back (`MADV_DONTNEED`) and keeps the range mapped.
//!
//! **Invariants.**
//! * The range lies inside the dead stack's own mapping: from the start of the writable
//!   mapping that holds the coroutine's stack mark (an address on its stack, taken when
//!   it started, see [`mark`]) up to the page below the mark. `generator` maps a stack
//!   with its guard page below it and protects that page, so the writable mapping starts
//!   exactly at the stack's lowest page: the kernel never merges it with a mapping
//!   below. (It may merge it with one above; the range stops below the mark, inside the
//!   stack.) The mapping is looked up in `/proc/self/maps`; nothing is released unless
//!   it is found, private and writable, and starts no further below the mark than the
//!   stack is long.
//! * It is called only once nothing reads the dead stack again: after the coroutine's
//!   release actions (which may read data on it) and its overflow hook. No I/O can be in
//!   flight into it: a coroutine parks until its I/O completes, and a parked coroutine
//!   does not overflow.
//! * The range stays mapped, never unmapped: no later allocation can take it, so even a
//!   stale pointer into the dead stack (there should be none) would reach zeroed pages
//!   of that stack, never another object.
use std::ops::Range;

/// An address on the caller's stack: a local's, in a frame of its own (so it lies below
/// the caller's frame, inside the same stack).
#[inline(never)]
pub(crate) fn mark() -> usize {
    let here = 0u8;
    std::hint::black_box(std::ptr::addr_of!(here)) as usize
}

/// Why a dead stack's pages stayed resident.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReleaseError {
    /// `/proc/self/maps` could not be read.
    #[error("cannot read /proc/self/maps: {0}")]
    Maps(std::io::Error),
    /// No private writable mapping holds the mark, or it reaches further below than a
    /// stack of this size could.
    #[error("no stack mapping of at most {stack_bytes} bytes holds address {mark:#x}")]
    NotAStack { mark: usize, stack_bytes: usize },
    /// The kernel refused the advice.
    #[error("madvise(MADV_DONTNEED) failed: {0}")]
    Advise(std::io::Error),
}

/// Gives back the pages of the dead stack below `mark` (an address taken on it by
/// [`mark`]); `stack_bytes` is its size. Returns the bytes released.
pub(crate) fn release(mark: usize, stack_bytes: usize) -> Result<usize, ReleaseError> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(ReleaseError::Maps)?;
    let range = dead_range(&maps, mark, stack_bytes)
        .ok_or(ReleaseError::NotAStack { mark, stack_bytes })?;
    if range.is_empty() {
        return Ok(0);
    }
    // SAFETY: `range` lies inside the dead coroutine's stack mapping (see `dead_range`
    // and the module docs), which nothing reads or writes any more and which stays
    // mapped; `MADV_DONTNEED` on a private anonymous mapping only drops its pages (they
    // read back as zeros), and touches no other mapping.
    unsafe {
        rustix::mm::madvise(
            range.start as *mut std::ffi::c_void,
            range.len(),
            rustix::mm::Advice::LinuxDontNeed,
        )
    }
    .map_err(|err| ReleaseError::Advise(err.into()))?;
    Ok(range.len())
}

/// The pages to release for a stack of `stack_bytes` holding `mark`, given the text of
/// `/proc/self/maps`: from the start of the private writable mapping holding `mark` to
/// the page below `mark`'s; `None` if there is no such mapping, or if it starts further
/// below `mark` than the stack and a page could reach.
fn dead_range(maps: &str, mark: usize, stack_bytes: usize) -> Option<Range<usize>> {
    let mapping = maps
        .lines()
        .filter_map(parse_mapping)
        .find(|(range, _)| range.contains(&mark))?;
    let (range, perms) = mapping;
    let private_writable = perms.starts_with("rw") && perms.ends_with('p');
    let reach = stack_bytes.checked_add(PAGE)?;
    if !private_writable || mark - range.start > reach {
        return None;
    }
    let end = mark & !(PAGE - 1);
    Some(range.start..end.max(range.start))
}

/// The page size `generator` aligns stacks to (4 KiB on every target we build for).
const PAGE: usize = 4096;

/// `start-end perms ...` of one line of `/proc/self/maps`.
fn parse_mapping(line: &str) -> Option<(Range<usize>, &str)> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (start < end && start % PAGE == 0).then_some((start..end, perms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0021000 r--p 00000000 fd:01 123 /usr/bin/chimaera
7f0000000000-7f0000001000 ---p 00000000 00:00 0
7f0000001000-7f0000041000 rw-p 00000000 00:00 0
7f0000041000-7f0000042000 ---p 00000000 00:00 0
7f0000042000-7f0000090000 rw-s 00000000 00:05 77 /dev/shm/chi
garbage line
";

    #[test]
    fn the_range_runs_from_the_mapping_start_to_the_page_below_the_mark() {
        let mark = 0x7f00_0003_f123;
        assert_eq!(
            dead_range(MAPS, mark, 0x40000),
            Some(0x7f00_0000_1000..0x7f00_0003_f000)
        );
        // A mark on the lowest page: nothing to release.
        assert_eq!(
            dead_range(MAPS, 0x7f00_0000_1008, 0x40000),
            Some(0x7f00_0000_1000..0x7f00_0000_1000)
        );
    }

    #[test]
    fn no_range_outside_a_private_writable_mapping_or_past_a_stack_length() {
        // In the guard page, in a shared mapping, in no mapping, in a read-only one.
        for mark in [0x7f00_0000_0800, 0x7f00_0004_3000, 0x1000, 0x55d0_c000_0100] {
            assert_eq!(dead_range(MAPS, mark, 0x40000), None, "{mark:#x}");
        }
        // A mapping starting further below the mark than a stack this size could.
        assert_eq!(dead_range(MAPS, 0x7f00_0003_f123, 0x10000), None);
    }

    /// A stack shaped as `generator` maps one (a guard page below a writable range) with
    /// a mapping of other data right below the guard: releasing from a mark zeroes
    /// exactly the stack's pages below the mark, and nothing else.
    #[test]
    fn release_zeroes_only_the_stack_pages_below_the_mark() {
        const PAGES: usize = 16;
        let total = PAGES * PAGE;
        // SAFETY: a fresh anonymous mapping of our own, unmapped at the end of the test.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .expect("map") as *mut u8;
        // Pages 0..4: a neighbour's data; page 4: the guard; pages 5..16: the stack.
        // SAFETY: inside the mapping just made, which only this test uses.
        unsafe {
            std::ptr::write_bytes(base, 0xab, total);
            rustix::mm::mprotect(
                base.add(4 * PAGE).cast(),
                PAGE,
                rustix::mm::MprotectFlags::empty(),
            )
            .expect("guard page");
        }
        let mark = base as usize + 12 * PAGE + 100;
        let released = release(mark, 11 * PAGE).expect("released");
        assert_eq!(released, 7 * PAGE);
        // SAFETY: reads inside the mapping (the guard page skipped).
        let byte = |page: usize| unsafe { *base.add(page * PAGE + 7) };
        for page in 0..4 {
            assert_eq!(byte(page), 0xab, "neighbour page {page}");
        }
        for page in 5..12 {
            assert_eq!(byte(page), 0, "stack page {page} below the mark");
        }
        for page in 12..PAGES {
            assert_eq!(byte(page), 0xab, "stack page {page} at or above the mark");
        }
        // SAFETY: our mapping, no longer used.
        unsafe { rustix::mm::munmap(base.cast(), total) }.expect("unmap");
    }
}
