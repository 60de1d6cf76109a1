//! The external programs the stores run (`certutil`, `sudo`, `security`, …), behind a trait so
//! that tests can play them and check the exact commands.

use super::TrustEnv;

/// What a command printed and whether it succeeded.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs external programs. [`SystemCommands`] runs them for real.
pub trait Commands {
    /// Whether `program` can be found on `PATH`.
    fn exists(&self, program: &str) -> bool;
    /// Runs `program` with `args`, with no standard input (nothing may prompt).
    fn run(&self, program: &str, args: &[String]) -> std::io::Result<CommandOutput>;
}

/// The real thing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemCommands;

impl Commands for SystemCommands {
    fn exists(&self, program: &str) -> bool {
        which::which(program).is_ok()
    }

    fn run(&self, program: &str, args: &[String]) -> std::io::Result<CommandOutput> {
        tracing::debug!(program, ?args, "running");
        let output = std::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output()?;
        Ok(CommandOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

impl TrustEnv<'_> {
    pub(super) fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.commands.run(program, &args).map_err(|error| format!("cannot run {program}: {error}"))
    }

    /// Runs a command that must succeed; the error is its own words.
    pub(super) fn run_ok(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let output = self.run(program, args)?;
        if output.success {
            Ok(())
        } else {
            let said = output.stderr.trim();
            let said = if said.is_empty() { output.stdout.trim() } else { said };
            Err(format!("`{program} {}` failed: {said}", args.join(" ")))
        }
    }
}
