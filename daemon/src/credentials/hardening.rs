//! Process hardening at daemon start, so secrets in memory do not end up on disk.
//!
//! Linux: `PR_SET_DUMPABLE=0` (no core dumps, no ptrace attach by other same-uid processes,
//! `/proc/PID/mem` and friends owned by root) and `RLIMIT_CORE=0`; memory is locked with
//! `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` only when `RLIMIT_MEMLOCK` is unlimited
//! (e.g. `LimitMEMLOCK=infinity` in the systemd unit, or root), because with a finite limit
//! future allocations would fail once it is reached. Otherwise one log line says memory is
//! not locked. Other platforms: nothing yet (logged once).

use tracing::{info, warn};

/// What [`apply`] managed to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hardening {
    /// The process is not dumpable (`PR_SET_DUMPABLE=0`).
    pub not_dumpable: bool,
    /// The core-file size limit is 0.
    pub no_core: bool,
    /// All memory (current and future) is locked against swapping.
    pub memory_locked: bool,
}

/// Applies the hardening (best effort; every failure is logged once, none is fatal) and
/// logs a one-line summary.
pub fn apply() -> Hardening {
    let done = apply_platform();
    info!(
        not_dumpable = done.not_dumpable,
        no_core = done.no_core,
        memory_locked = done.memory_locked,
        "process hardening"
    );
    done
}

#[cfg(target_os = "linux")]
fn apply_platform() -> Hardening {
    use rustix::mm::{mlockall, MlockAllFlags};
    use rustix::process::{
        getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit,
    };
    let mut done = Hardening::default();
    match set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        Ok(()) => done.not_dumpable = true,
        Err(e) => warn!(error = %e, "cannot make the process undumpable (PR_SET_DUMPABLE)"),
    }
    match setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    ) {
        Ok(()) => done.no_core = true,
        Err(e) => warn!(error = %e, "cannot set RLIMIT_CORE to 0"),
    }
    let memlock = getrlimit(Resource::Memlock);
    if memlock.current.is_none() {
        let flags = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT;
        match mlockall(flags) {
            Ok(()) => done.memory_locked = true,
            Err(e) => {
                warn!(error = %e, "memory not locked (mlockall failed); secrets could be swapped out")
            }
        }
    } else {
        info!(
            memlock_limit_bytes = memlock.current,
            "memory not locked: RLIMIT_MEMLOCK is finite (set LimitMEMLOCK=infinity to lock it); secrets could be swapped out"
        );
    }
    done
}

#[cfg(not(target_os = "linux"))]
fn apply_platform() -> Hardening {
    info!("no process hardening on this platform yet (core dumps and swap are up to the OS)");
    Hardening::default()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn makes_the_process_undumpable_without_cores() {
        let done = apply();
        assert!(done.not_dumpable && done.no_core, "{done:?}");
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
        let core = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!(core.current, Some(0));
    }
}
