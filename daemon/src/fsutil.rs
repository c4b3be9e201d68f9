//! Small filesystem helpers shared by the broker's state file, the audit log and the
//! per-grant Unix-socket listeners.

use std::path::Path;

/// Creates `dir` and any missing parents; new directories get mode 0700 on Unix. An
/// existing directory is left as it is.
///
/// # Errors
/// The I/O error from creating a directory.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}
