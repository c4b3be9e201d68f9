//! `agentd completions SHELL` and the hidden `agentd man --out DIR`: shell completions
//! (clap_complete) and man pages (clap_mangen), both generated from the clap definition
//! in [`super::Cli`], so they cannot drift from the real flags. The `.deb` ships their
//! output (`packaging/deb/build.sh`).

use super::Cli;
use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use std::path::{Path, PathBuf};

/// `agentd completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for (on stdout).
    ///
    /// bash: save as /usr/share/bash-completion/completions/agentd (or source it);
    /// zsh: as `_agentd` in a directory on $fpath; fish: as
    /// ~/.config/fish/completions/agentd.fish.
    pub shell: clap_complete::Shell,
}

/// `agentd man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing): `agentd.1` and one
    /// `agentd-SUBCOMMAND.1` per subcommand (nested ones joined by `-`), uncompressed roff.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
///
/// # Errors
/// None in practice; the signature matches the other subcommands.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "agentd", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Writes the man pages into `args.out` and prints each path written.
///
/// # Errors
/// The directory cannot be created or a page cannot be written (the error names the path).
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let written = write_man_pages(&args.out)?;
    let mut out = std::io::stdout().lock();
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Writes `agentd.1` and a page per (nested) visible subcommand into `dir`; returns the
/// paths, top-level page first.
///
/// # Errors
/// As [`man`].
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    render(&cmd, "agentd", dir, &mut written)?;
    Ok(written)
}

fn render(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    // The page's title is its file name, so `man agentd-status` finds what it names.
    let page = cmd.clone().name(name.to_owned());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .with_context(|| format!("rendering the man page for {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        render(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "agentd.1");
        for expected in ["agentd-status.1", "agentd-secret-set.1", "agentd-doctor.1"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n == "agentd-man.1"),
            "hidden: {names:?}"
        );
        for path in &written {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.starts_with(".ie \\n(.g .ds Aq"),
                "roff in {}",
                path.display()
            );
            assert!(text.contains(".SH NAME"), "{}", path.display());
        }
    }
}
