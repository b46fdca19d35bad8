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
//! **Speed.** A loop of word-sized atomics is not vectorised: a 4 KiB block took about
//! as long as the rest of a bdev write. On x86-64, copies of [`STRING_COPY_MIN`] bytes
//! or more are one `rep movsb` (`rep stosb` for a fill) in an `asm!` block instead: the
//! hardware moves whole lines, and what it guarantees of a racing peer is what the
//! atomic loop gives at byte granularity — every byte read is a byte some writer stored.
//! An `asm!` block touches memory outside Rust's model; it is sound here because no Rust
//! reference to the shared side exists (callers pass raw pointers) and the private side
//! is the caller's exclusive `&mut [u8]` or a `&[u8]` nobody writes. So a racing peer
//! can tear a *word* in a long copy (bytes of two writes); nothing relies on words.
//!
//! **Streaming.** [`load_streaming`] writes the destination's whole lines with
//! non-temporal stores (`movntdq`): they go to memory without first reading each line
//! into the cache, and a copy into memory the program will not read soon (a RAM
//! device's block) neither waits for those reads nor evicts what the thread uses next.
//! A store fence ends it, so the copied bytes are ordered before the caller's next
//! store (the release of a lock that guards them). Its loads are plain loads in an
//! `asm!` block, sound on shared memory for the reason above.
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

/// Copies at least this long use the CPU's string instructions (x86-64), below it the
/// loop of atomics (a string instruction's start-up costs about as much as a short copy).
pub const STRING_COPY_MIN: usize = 128;

/// `rep movsb`: copies `len` bytes from `src` to `dst`, byte by byte as far as any
/// observer can tell (see the module docs).
///
/// # Safety
/// `src..src + len` readable, `dst..dst + len` writable, not overlapping, for the call;
/// no Rust reference may exist to whichever side other threads or processes write.
#[cfg(target_arch = "x86_64")]
unsafe fn string_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller guarantees both ranges; `rep movsb` reads and writes exactly
    // them (the direction flag is clear on entry to an `asm!` block, so it moves
    // upwards), touches no stack and leaves the flags alone.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Copies at least this long may stream ([`load_streaming`]); below it the closing
/// fence costs more than the line reads it saves.
pub const STREAMING_MIN: usize = 1024;

/// Copies `lines` 64-byte lines from `src` to `dst` with `movdqu` loads and `movntdq`
/// (non-temporal) stores, then `sfence`.
///
/// # Safety
/// `src..src + 64 * lines` readable, `dst..dst + 64 * lines` writable, not overlapping,
/// for the call; `dst` 64-byte aligned, `lines > 0`; no Rust reference may exist to
/// whichever side other threads or processes write.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_lines(src: *const u8, dst: *mut u8, lines: usize) {
    // SAFETY: the caller guarantees both ranges and the alignment `movntdq` needs (16
    // bytes; 64 so that each line is written whole). SSE2 is part of x86-64. The block
    // touches no stack; `add`/`dec` change the flags, which `asm!` assumes by default.
    unsafe {
        std::arch::asm!(
            "2:",
            "movdqu xmm0, [rsi]",
            "movdqu xmm1, [rsi + 16]",
            "movdqu xmm2, [rsi + 32]",
            "movdqu xmm3, [rsi + 48]",
            "movntdq [rdi], xmm0",
            "movntdq [rdi + 16], xmm1",
            "movntdq [rdi + 32], xmm2",
            "movntdq [rdi + 48], xmm3",
            "add rsi, 64",
            "add rdi, 64",
            "dec rcx",
            "jnz 2b",
            "sfence",
            inout("rcx") lines => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
            options(nostack)
        );
    }
}

/// `rep stosb`: sets `len` bytes at `dst` to `value`.
///
/// # Safety
/// `dst..dst + len` writable for the call; no Rust reference to it may exist.
#[cfg(target_arch = "x86_64")]
unsafe fn string_fill(dst: *mut u8, len: usize, value: u8) {
    // SAFETY: as for `string_copy`, for the one range.
    unsafe {
        std::arch::asm!(
            "rep stosb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            in("al") value,
            options(nostack, preserves_flags)
        );
    }
}

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` must be mapped, readable memory for the duration of the call
/// (a read-only mapping will do: relaxed atomic loads of at most a word are plain loads,
/// which the standard library allows on read-only memory), and not be part of `dst`.
pub unsafe fn load(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    #[cfg(target_arch = "x86_64")]
    if len >= STRING_COPY_MIN {
        // SAFETY: `src` is readable for `len` (the caller's contract) and `dst` is our
        // exclusive buffer of `len` bytes, separate from it.
        unsafe { string_copy(src, dst.as_mut_ptr(), len) };
        return;
    }
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

/// As [`load`], but the whole lines of `dst` are written with non-temporal stores
/// where the CPU has them (x86-64; elsewhere this is [`load`]), for a destination that
/// is not read again soon; see the module docs. Copies shorter than [`STREAMING_MIN`]
/// are a plain [`load`]. `src` may be private memory too (nobody writes it meanwhile).
///
/// # Safety
/// As for [`load`].
pub unsafe fn load_streaming(src: *const u8, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAMING_MIN {
        let head = dst.as_ptr().align_offset(64).min(dst.len());
        let lines = (dst.len() - head) / 64;
        let body = head + lines * 64;
        let (start, rest) = dst.split_at_mut(head);
        let (middle, tail) = rest.split_at_mut(lines * 64);
        // SAFETY (all three): `src` is readable for `dst.len()` bytes (the caller's
        // contract), so for each part at its offset; each part is our own memory,
        // separate from it. `middle` starts 64-byte aligned (`align_offset`) and holds
        // `lines` whole lines, at least one (`STREAMING_MIN` exceeds 2 * 64).
        unsafe {
            load(src, start);
            stream_lines(src.add(head), middle.as_mut_ptr(), lines);
            load(src.add(body), tail);
        }
        return;
    }
    // SAFETY: the caller's promise, as for `load`.
    unsafe { load(src, dst) }
}

/// Copies `src` into shared memory at `dst`.
///
/// # Safety
/// `dst..dst + src.len()` must be mapped, writable memory for the duration of the call,
/// not part of `src`, and no reference to it may exist in this process.
pub unsafe fn store(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    #[cfg(target_arch = "x86_64")]
    if len >= STRING_COPY_MIN {
        // SAFETY: `dst` is writable for `len` with no reference to it (the caller's
        // contract); `src` is a separate slice of `len` bytes.
        unsafe { string_copy(src.as_ptr(), dst, len) };
        return;
    }
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
    #[cfg(target_arch = "x86_64")]
    if len >= STRING_COPY_MIN {
        // SAFETY: `dst` is writable for `len` with no reference to it (the caller's
        // contract).
        unsafe { string_fill(dst, len, value) };
        return;
    }
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
        let source: Vec<u8> = (0..=255u8)
            .cycle()
            .take(600)
            .map(|b| b.wrapping_mul(37).wrapping_add(1))
            .collect();
        // Short lengths (the atomic loop) and long ones (string instructions).
        let lengths = (0..40).chain([STRING_COPY_MIN - 1, STRING_COPY_MIN, 300, 511]);
        for start in 0..WORD * 2 {
            for len in lengths.clone() {
                let mut shared = vec![0xeeu8; 600];
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

    /// Streaming copies of every alignment and of lengths around the line and the
    /// threshold round-trip, and touch nothing outside their destination.
    #[test]
    fn streaming_copies_round_trip() {
        let source: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let lengths = [
            0,
            1,
            STREAMING_MIN - 1,
            STREAMING_MIN,
            STREAMING_MIN + 1,
            STREAMING_MIN + 63,
            4096,
            4096 + 65,
        ];
        for src_start in [0, 3, 64] {
            for dst_start in 0..70 {
                for len in lengths {
                    let mut dst = vec![0xeeu8; 4096 + 256];
                    let src = &source[src_start..src_start + len];
                    // SAFETY: `src` is readable for `len` and separate from `dst`.
                    unsafe { load_streaming(src.as_ptr(), &mut dst[dst_start..dst_start + len]) };
                    assert_eq!(&dst[dst_start..dst_start + len], src, "{dst_start} {len}");
                    assert!(dst[..dst_start].iter().all(|&b| b == 0xee));
                    assert!(dst[dst_start + len..].iter().all(|&b| b == 0xee));
                }
            }
        }
    }

    /// A writer flipping the shared bytes while another thread copies them: the copy
    /// only ever sees bytes of one pattern or the other, and whole words of one pattern
    /// in a copy short enough for the atomic loop (the test itself has no data race for
    /// Miri or TSan to find: both sides are atomic, or `asm!`).
    #[test]
    fn a_racing_writer_yields_bytes_it_wrote() {
        // Short: words; long: bytes; longest: streamed too.
        for (words, whole_words) in [(4usize, true), (64, false), (512, false)] {
            racing_copy(words, whole_words);
        }
    }

    fn racing_copy(words: usize, whole_words: bool) {
        let mut memory = vec![0u64; words];
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
            let mut streamed = vec![0u8; len];
            while !writer.is_finished() {
                // SAFETY: as above.
                unsafe { load(base as *const u8, &mut copy) };
                // SAFETY: as above.
                unsafe { load_streaming(base as *const u8, &mut streamed) };
                assert!(streamed.iter().all(|&b| b == 0 || b == 0x11 || b == 0x22));
                assert!(copy.iter().all(|&b| b == 0 || b == 0x11 || b == 0x22));
                if whole_words {
                    for word in copy.chunks(WORD) {
                        assert!(word.iter().all(|&b| b == word[0]), "torn word {word:?}");
                    }
                }
            }
        });
    }
}
