//! The daemon's memory allocator: jemalloc.
//!
//! A loaded automerge document is tens of thousands of small column slabs that loading
//! allocates in between as many short-lived temporaries. glibc's malloc keeps the
//! freed temporaries' pages resident wherever a surviving slab shares them, even after
//! `malloc_trim`. jemalloc keeps each size class in its own runs, so what loading frees
//! comes back as whole pages. Measured with a one-off probe (automerge alone, not in
//! the repo) on a document of 100,000 changes (snapshot 0.92 MB, live heap 13.9 MiB):
//! resident 26.2 MiB on glibc after `malloc_trim`, 17.9 MiB on jemalloc after a purge.
//! `cargo bench -p murmur-tests --bench docs` reports the daemon's figure.
//!
//! The `murmur` binary installs [`Jemalloc`] as its global allocator; a program that
//! embeds the daemon's library chooses its own.

pub use tikv_jemallocator::Jemalloc;

/// Returns free memory held by the allocators to the OS now. Called after a document is
/// loaded, saved or dropped, which allocate and free large temporaries.
pub fn release_free_memory() {
    // jemalloc: purge the unused dirty pages of every arena (4096 is
    // MALLCTL_ARENAS_ALL) now, rather than after its ten-second decay. Harmless when
    // jemalloc is not the global allocator: its symbols are prefixed, so this only
    // touches jemalloc's own (then empty) arenas.
    // SAFETY: a void mallctl ("arena.<i>.purge") takes and returns no values.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
    // glibc: RocksDB's C++ allocations, and everything when the embedding program
    // kept the system allocator.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
