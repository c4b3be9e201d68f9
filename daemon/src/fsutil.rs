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

/// Writes `bytes` to `path`, created with mode 0600 on Unix (an existing file keeps its
/// mode) and truncated.
///
/// # Errors
/// The I/O error from opening or writing.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    std::io::Write::write_all(&mut opts.open(path)?, bytes)
}
