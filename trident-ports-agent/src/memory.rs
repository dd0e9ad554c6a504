//! Freed heap returned to the system: a large policy's YAML, inventory and tables are transient,
//! and so is the previous policy's explainer (`events::explain`), and glibc keeps freed memory
//! otherwise.

/// Releases the free heap (malloc_trim).
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
