//! Layer work gives way to go's compiler and linker while a build of this process runs them.
//!
//! With several platforms the links end at different times, and the build waits for the
//! last. The hashing and compression of a platform that finished first would otherwise take
//! CPU from the link still running; at a lower priority it takes what that link leaves.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many builds (go's or kodev's relinks) are running go's tools now.
static TOOLCHAIN_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How far a layer thread's nice value goes up while the toolchain runs: enough that the
/// scheduler gives the linker most of a shared core.
const LOWER_BY: i32 = 10;

/// Held while a build runs go's tools for one platform, up to its finished binary.
pub struct ToolchainBusy(());

impl ToolchainBusy {
    pub fn begin() -> Self {
        TOOLCHAIN_RUNNING.fetch_add(1, Ordering::Relaxed);
        ToolchainBusy(())
    }
}

impl Drop for ToolchainBusy {
    fn drop(&mut self) {
        TOOLCHAIN_RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Called first on a thread that lives for one layer's work only (a thread's nice value is
/// its own on Linux, and cannot be lowered back without privilege): lowers its priority when
/// go's tools are running. Returns whether it did.
pub fn give_way_to_toolchain() -> bool {
    if TOOLCHAIN_RUNNING.load(Ordering::Relaxed) == 0 {
        return false;
    }
    lower_this_thread()
}

#[cfg(target_os = "linux")]
fn lower_this_thread() -> bool {
    // SAFETY: gettid, getpriority and setpriority take plain integers and touch no memory of
    // ours; errno is this thread's own.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return false;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + LOWER_BY).min(19)) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn nice_of_this_thread() -> i32 {
        // SAFETY: as in `lower_this_thread`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_layer_thread_gives_way_only_while_the_toolchain_runs() {
        let caller = nice_of_this_thread();
        let before = std::thread::spawn(|| (nice_of_this_thread(), give_way_to_toolchain(), nice_of_this_thread()))
            .join()
            .unwrap();
        let busy = ToolchainBusy::begin();
        let during = std::thread::spawn(|| (nice_of_this_thread(), give_way_to_toolchain(), nice_of_this_thread()));
        let (start, gave_way, after) = during.join().unwrap();
        drop(busy);
        assert!(gave_way, "a thread started while go's tools run lowers its priority");
        assert_eq!(after, (start + LOWER_BY).min(19));
        // Other tests may hold the toolchain busy meanwhile; only a thread that did not give way
        // must keep its nice value.
        let (start, gave_way, after) = before;
        if !gave_way {
            assert_eq!(after, start);
        }
        assert_eq!(nice_of_this_thread(), caller, "the thread that held the toolchain busy is left as it was");
    }
}
