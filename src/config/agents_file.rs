//! `--agents-file`: the agents to sign in at start and keep signed in, with passwords read
//! from files or environment variables only (never inline), and files that every user can read
//! refused.

use super::{invalid, read, ConfigError, PinnedAgent};
use crate::grpc::validate::{self, Limits, Violations};
use crate::secret::Password;
use crate::session::SignInParams;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    #[serde(default)]
    agent: Vec<AgentEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentEntry {
    id: String,
    phone_number: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default)]
    force: bool,
    auto_answer: Option<bool>,
    auto_enter_idle: Option<bool>,
    release_phone: Option<bool>,
    agent_type: Option<u32>,
    status: Option<u32>,
}

/// Reads the agents file; `env` looks up `password_env` names (injected so tests need not
/// touch the process environment).
pub fn load_agents(
    path: &Path,
    limits: &Limits,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<PinnedAgent>, ConfigError> {
    refuse_world_readable(path, "--agents-file", "it holds or points at passwords")?;
    let text = String::from_utf8(read(path, "--agents-file")?)
        .map_err(|_| invalid(format!("--agents-file {}: not UTF-8", path.display())))?;
    let file: AgentsFile = toml::from_str(&text)
        .map_err(|e| invalid(format!("--agents-file {}: {e}", path.display())))?;
    if file.agent.is_empty() {
        return Err(invalid(format!(
            "--agents-file {}: lists no agent (one [[agent]] table per agent, with id, phone_number and password_file or password_env); drop --agents-file to start without agents",
            path.display()
        )));
    }
    // A relative password_file names a file beside the agents file, wherever the bridge runs.
    let folder = path.parent().unwrap_or(Path::new(""));
    let mut seen = std::collections::HashSet::new();
    file.agent
        .into_iter()
        .map(|a| {
            let ctx = format!("--agents-file {}: agent {:?}", path.display(), a.id);
            let mut v = Violations::default();
            limits.agent_id(&mut v, "id", &a.id);
            validate::phone_number(&mut v, "phone_number", &a.phone_number);
            validate::agent_type(&mut v, "agent_type", a.agent_type);
            validate::status(&mut v, "status", a.status);
            v.into_result().map_err(|m| invalid(format!("{ctx}: {m}")))?;
            if !seen.insert(a.id.clone()) {
                return Err(invalid(format!("{ctx}: listed twice")));
            }
            let password = match (&a.password_file, &a.password_env) {
                (Some(file), None) => {
                    let file = folder.join(file);
                    refuse_world_readable(&file, &ctx, "it holds a password")?;
                    read_password_file(&file, &ctx)?
                }
                (None, Some(name)) => Password::new(env(name).ok_or_else(|| {
                    invalid(format!("{ctx}: environment variable {name} is not set"))
                })?),
                _ => {
                    return Err(invalid(format!(
                        "{ctx}: give exactly one of password_file or password_env (never the password itself)"
                    )))
                }
            };
            let mut v = Violations::default();
            validate::password(&mut v, "password", password.expose());
            v.into_result().map_err(|m| invalid(format!("{ctx}: {m}")))?;
            Ok(PinnedAgent {
                agent_id: a.id,
                params: SignInParams {
                    password,
                    phone_number: a.phone_number,
                    force: a.force,
                    auto_answer: a.auto_answer,
                    auto_enter_idle: a.auto_enter_idle,
                    release_phone: a.release_phone,
                    agent_type: a.agent_type,
                    status: a.status,
                },
            })
        })
        .collect()
}

/// A password file's content without its trailing newline. Every buffer that held it is wiped
/// (the file's bytes on drop, the password itself with the [`Password`]), and the password is
/// copied once into a string of exactly its size, so no copy is left in freed memory.
pub(super) fn read_password_file(file: &Path, ctx: &str) -> Result<Password, ConfigError> {
    let raw = Zeroizing::new(read(file, &format!("{ctx}: password_file"))?);
    let text = std::str::from_utf8(&raw)
        .map_err(|_| invalid(format!("{ctx}: password_file is not UTF-8")))?
        .trim_end_matches(['\r', '\n']);
    let mut password = String::with_capacity(text.len());
    password.push_str(text);
    Ok(Password::new(password))
}

#[cfg(unix)]
pub(super) fn refuse_world_readable(
    path: &Path,
    what: &str,
    holds: &str,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(format!("{what} {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(invalid(format!(
            "{what} {}: readable by every user (mode {:o}); {holds}: chmod o-r it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn refuse_world_readable(_: &Path, _: &str, _: &str) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn agents_file_reads_passwords_from_files_or_env_only() {
        let dir = std::env::temp_dir().join(format!("ccgw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = dir.join("agents.toml");
        let write = |text: &str, mode: u32| {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let env = |name: &str| (name == "PW_1002").then(|| "envpw".to_owned());
        let limits = Limits::default();
        write(
            &format!(
                "[[agent]]\nid = \"1001\"\nphone_number = \"88001\"\npassword_file = \"{}\"\n\n[[agent]]\nid = \"1002\"\nphone_number = \"88002\"\npassword_env = \"PW_1002\"\nforce = true\n",
                pw.display()
            ),
            0o600,
        );
        let agents = load_agents(&file, &limits, &env).unwrap();
        assert_eq!(agents[0].params.password.expose(), "secret");
        assert_eq!(agents[1].params.password.expose(), "envpw");
        assert!(agents[1].params.force);

        write(
            "[[agent]]\nid = \"1001\"\nphone_number = \"1\"\npassword = \"x\"\n",
            0o600,
        );
        assert!(
            load_agents(&file, &limits, &env).is_err(),
            "inline passwords refused"
        );
        write(
            "[[agent]]\nid = \"1001\"\nphone_number = \"1\"\npassword_env = \"NOPE\"\n",
            0o600,
        );
        assert!(load_agents(&file, &limits, &env)
            .unwrap_err()
            .to_string()
            .contains("NOPE"));
        write(
            "[[agent]]\nid = \"1001\"\nphone_number = \"1\"\npassword_env = \"PW_1002\"\n",
            0o644,
        );
        assert!(load_agents(&file, &limits, &env)
            .unwrap_err()
            .to_string()
            .contains("readable by every user"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
