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

/// Lets one more user, `uid`, read the file open as `file` (which stays the daemon's, mode
/// 0600 for everyone else): a POSIX access ACL `user::rw-, user:UID:r--, group::---,
/// mask::r--, other::---`, set as the `system.posix_acl_access` extended attribute. Used
/// in system mode, where a grant's files belong to the daemon's user but must be readable
/// by the grant's owner, and the daemon has no privilege to `chown`.
///
/// Format: Linux `include/uapi/linux/posix_acl_xattr.h`: a little-endian `u32` version (2),
/// then entries of `u16` tag, `u16` permissions, `u32` id, sorted by tag then id.
///
/// # Errors
/// The error from `fsetxattr(2)` (through the `xattr` crate), e.g. `EOPNOTSUPP` on a
/// filesystem without ACLs.
#[cfg(target_os = "linux")]
pub fn allow_reader(file: &std::fs::File, uid: u32) -> std::io::Result<()> {
    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED_ID: u32 = u32::MAX;
    const READ: u16 = 4;
    const WRITE: u16 = 2;
    let entries: [(u16, u16, u32); 5] = [
        (USER_OBJ, READ | WRITE, UNDEFINED_ID),
        (USER, READ, uid),
        (GROUP_OBJ, 0, UNDEFINED_ID),
        (MASK, READ, UNDEFINED_ID),
        (OTHER, 0, UNDEFINED_ID),
    ];
    let mut acl = Vec::with_capacity(4 + entries.len() * 8);
    acl.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, perm, id) in entries {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    xattr::FileExt::set_xattr(file, "system.posix_acl_access", &acl)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// On this machine's temporary filesystem: the ACL reads back through the kernel as
    /// the owner's plus one named reader, and the mode's group bits become the mask (r).
    #[test]
    fn allow_reader_sets_a_one_user_acl() {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        match allow_reader(&file, 4242) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("SKIPPED: no ACLs on {}", dir.path().display());
                return;
            }
            Err(e) => panic!("fsetxattr: {e}"),
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "group bits show the mask");
        let acl = xattr::get(&path, "system.posix_acl_access")
            .unwrap()
            .unwrap_or_default();
        assert_eq!(acl.len(), 44, "version + 5 entries");
        assert_eq!(&acl[12..20], &[0x02, 0, 4, 0, 0x92, 0x10, 0, 0]);
    }
}
