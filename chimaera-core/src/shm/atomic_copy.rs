//! Copies between our own memory and memory another process may write at any moment.
//!
//! A plain copy (`copy_from_slice`, `ptr::copy_nonoverlapping`, a `&[u8]` over the
//! mapping) of bytes a peer writes concurrently is a data race under Rust's memory
//! model: the compiler may assume the bytes do not change, read one twice (after a
//! bounds check, say) and see two values. These copies instead read and write the
//! shared side with **relaxed atomic** accesses — aligned machine words, single bytes at
//! the unaligned ends — so a racing peer makes the copied *bytes* unspecified (each word
//! is some value the peer wrote), never the program's behaviour. This is the "byte-wise
//! atomic memcpy" of RFC 3301, which the standard library does not offer yet.
//!
//! `vm-memory`'s `VolatileSlice` was considered for this: its copies of more than eight
//! bytes are a plain `memcpy` (the data race above), so it does not give what we need.
//!
//! Invariants:
//! * only the shared side is accessed atomically; the private side is ordinary memory
//!   the caller owns (`&[u8]` / `&mut [u8]`), which no other thread touches meanwhile;
//! * word boundaries are those of the *shared address*, so two copies of one range in
//!   this process use the same access size for every word they both touch fully (mixed
//!   sizes can only meet where one copy's unaligned head or tail lies; callers that may
//!   write a range exclude concurrent copies of it, as bulk claims do);
//! * ordering is `Relaxed`: whoever hands a range over (a slot state, a completion)
//!   publishes with its own `Release`/`Acquire`.
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

const WORD: usize = std::mem::size_of::<usize>();

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` must be mapped, readable memory for the duration of the call
/// (a read-only mapping will do: relaxed atomic loads of at most a word are plain loads,
/// which the standard library allows on read-only memory), and not be part of `dst`.
pub unsafe fn load(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let head = src.align_offset(WORD).min(len);
    for (i, byte) in dst[..head].iter_mut().enumerate() {
        // SAFETY: `src + i` is inside the caller's readable range; a byte is always
        // aligned for `AtomicU8`.
        *byte = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
    let words = (len - head) / WORD;
    for w in 0..words {
        let at = head + w * WORD;
        // SAFETY: `src + head` is word-aligned (`align_offset`), so is every `src + at`;
        // the word lies inside the caller's range (`at + WORD <= len`).
        let word = unsafe { AtomicUsize::from_ptr(src.add(at).cast::<usize>().cast_mut()) }
            .load(Ordering::Relaxed);
        dst[at..at + WORD].copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in dst.iter_mut().enumerate().skip(head + words * WORD) {
        // SAFETY: as for the head.
        *byte = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
}

/// Copies `src` into shared memory at `dst`.
///
/// # Safety
/// `dst..dst + src.len()` must be mapped, writable memory for the duration of the call,
/// not part of `src`, and no reference to it may exist in this process.
pub unsafe fn store(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let head = dst.align_offset(WORD).min(len);
    for (i, &byte) in src[..head].iter().enumerate() {
        // SAFETY: `dst + i` is inside the caller's writable range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
    let words = (len - head) / WORD;
    for w in 0..words {
        let at = head + w * WORD;
        let mut word = [0u8; WORD];
        word.copy_from_slice(&src[at..at + WORD]);
        // SAFETY: word-aligned (see `load`) and inside the caller's range.
        unsafe { AtomicUsize::from_ptr(dst.add(at).cast::<usize>()) }
            .store(usize::from_ne_bytes(word), Ordering::Relaxed);
    }
    for (i, &byte) in src.iter().enumerate().skip(head + words * WORD) {
        // SAFETY: as for the head.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
}

/// Sets `len` bytes of shared memory at `dst` to `value`.
///
/// # Safety
/// As for [`store`] with a source of `len` bytes.
pub unsafe fn fill(dst: *mut u8, len: usize, value: u8) {
    let head = dst.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    let pattern = usize::from_ne_bytes([value; WORD]);
    for i in (0..head).chain(head + words * WORD..len) {
        // SAFETY: `dst + i` is inside the caller's writable range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(value, Ordering::Relaxed);
    }
    for w in 0..words {
        // SAFETY: word-aligned and inside the caller's range (see `store`).
        unsafe { AtomicUsize::from_ptr(dst.add(head + w * WORD).cast::<usize>()) }
            .store(pattern, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment of start and length round-trips, and nothing outside the range
    /// is touched.
    #[test]
    fn copies_of_every_alignment_round_trip() {
        let source: Vec<u8> = (0..64u8)
            .map(|b| b.wrapping_mul(37).wrapping_add(1))
            .collect();
        for start in 0..WORD * 2 {
            for len in 0..40 {
                let mut shared = vec![0xeeu8; 64];
                let base = shared.as_mut_ptr();
                // SAFETY: the range lies inside `shared`, reached only through `base`.
                unsafe { store(base.add(start), &source[..len]) };
                let mut back = vec![0u8; len];
                // SAFETY: as above; `back` is separate memory.
                unsafe { load(base.add(start), &mut back) };
                assert_eq!(back, source[..len], "start {start} len {len}");
                assert!(shared[..start].iter().all(|&b| b == 0xee));
                assert!(shared[start + len..].iter().all(|&b| b == 0xee));
                // SAFETY: as above.
                unsafe { fill(base.add(start), len, 3) };
                assert!(shared[start..start + len].iter().all(|&b| b == 3));
                assert!(shared[start + len..].iter().all(|&b| b == 0xee));
            }
        }
    }

    /// A writer flipping the shared bytes while another thread copies them: the copy
    /// only ever sees whole words of one pattern or the other (and the test itself has
    /// no data race for Miri or TSan to find: both sides are atomic).
    #[test]
    fn a_racing_writer_yields_words_it_wrote() {
        let mut memory = vec![0u64; 64];
        let base = memory.as_mut_ptr().cast::<u8>() as usize;
        let len = memory.len() * 8;
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                for round in 0..2000u32 {
                    let value = if round % 2 == 0 { 0x11 } else { 0x22 };
                    // SAFETY: the vector outlives the scope; all access is atomic.
                    unsafe { fill(base as *mut u8, len, value) };
                }
            });
            let mut copy = vec![0u8; len];
            while !writer.is_finished() {
                // SAFETY: as above.
                unsafe { load(base as *const u8, &mut copy) };
                for word in copy.chunks(WORD) {
                    assert!(word.iter().all(|&b| b == word[0]), "torn word {word:?}");
                }
            }
        });
    }
}
