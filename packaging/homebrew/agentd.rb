# Homebrew formula for agentd. UNTESTED: written to Homebrew's Formula Cookbook, never run
# by our CI (no macOS runner). Install from a checkout with
#   brew install --build-from-source ./packaging/homebrew/agentd.rb
# `url`/`sha256` must point at a release tarball before this goes into a tap.
class Agentd < Formula
  desc "Credential-isolating local proxy daemon for AI agents"
  homepage "https://example.invalid/agentd"
  url "https://example.invalid/agentd/archive/refs/tags/v0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"
  head "https://example.invalid/agentd.git", branch: "main"

  depends_on "rust" => :build
  depends_on "postgresql@15" => :test

  def install
    system "cargo", "install", *std_cargo_args(path: "daemon")
    system "cargo", "install", *std_cargo_args(path: "shim")
    generate_completions_from_executable(bin/"agentd", "completions")
    system bin/"agentd", "man", "--out", buildpath/"man"
    man1.install Dir[buildpath/"man/*.1"]
    (share/"agentd").install "packaging/launchd/dev.agentd.daemon.plist"
  end

  # User mode: the daemon runs as you (a LaunchAgent). It does not hold against an agent
  # with a shell running as you; see the caveats for system mode.
  service do
    run [opt_bin/"agentd", "daemon"]
    keep_alive crashed: true
    log_path var/"log/agentd.log"
    error_log_path var/"log/agentd.log"
  end

  def caveats
    <<~EOS
      `brew services start agentd` runs agentd in USER mode, as you. User mode does not
      hold against an agent with a shell running as the same user (it can read the
      keychain entries the daemon reads and edit its config).

      System mode (the daemon as its own user; see packaging/README.md in the source):
        sudo dscl . -create /Groups/agentd PrimaryGroupID 399
        sudo dscl . -create /Users/agentd UniqueID 399
        sudo dscl . -create /Users/agentd PrimaryGroupID 399
        sudo dscl . -create /Users/agentd UserShell /usr/bin/false
        sudo dscl . -create /Users/agentd NFSHomeDirectory /var/empty
        then load #{opt_share}/agentd/dev.agentd.daemon.plist as a LaunchDaemon.
      `agentd doctor` reports what is exposed.
    EOS
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/agentd --version")
    system bin/"agentd", "completions", "zsh"
  end
end
