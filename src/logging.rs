//! Log lines: plain text for a terminal or the journal, or one JSON object per line for log
//! shippers (`LOG_FORMAT=json`), built on env_logger (`RUST_LOG` picks the levels).
//!
//! Nothing secret reaches a line, whatever `RUST_LOG` says: amiquip logs the AMQP handshake
//! (with the password) at debug and suppaftp logs `PASS …` at trace, so those crates are held
//! to [`CRATE_CAPS`]; and every password registered with [`redact`] is replaced by `***` in
//! every line, ours included. Control characters in a message (a newline in a file name) are
//! escaped, so one event is always one line.

use std::io::Write;
use std::str::FromStr;
use std::sync::RwLock;

use log::Level;

/// The most a dependency may log, by target prefix: the levels below it carry secrets.
pub const CRATE_CAPS: &[(&str, Level)] = &[("amiquip", Level::Info), ("suppaftp", Level::Debug)];

/// Secrets shorter than this are not searched for (they would mask ordinary words); the
/// crate caps still keep the handshakes out.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `[time LEVEL target] message`.
    #[default]
    Text,
    /// `{"ts":…,"level":…,"target":…,"msg":…}`, one object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("must be text or json, got {other:?}")),
        }
    }
}

/// Never writes `secret` in a log line from now on.
pub fn redact(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
        // Longest first, so that a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Whether a record from `target` at `level` may be written at all.
pub fn allowed(target: &str, level: Level) -> bool {
    CRATE_CAPS
        .iter()
        .filter(|(prefix, _)| {
            target == *prefix
                || target
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
        .all(|(_, cap)| level <= *cap)
}

/// The message as it may be written: secrets masked, control characters escaped.
pub fn clean(message: &str) -> String {
    let mut text = message.to_string();
    for secret in SECRETS.read().unwrap_or_else(|e| e.into_inner()).iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    if text.chars().any(char::is_control) {
        text = text
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
    }
    text
}

/// Installs the logger: `RUST_LOG` (default `info`) and the format.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(move |buf, record| {
        if !allowed(record.target(), record.level()) {
            return Ok(());
        }
        let msg = clean(&record.args().to_string());
        match format {
            LogFormat::Text => {
                let style = buf.default_level_style(record.level());
                writeln!(
                    buf,
                    "[{} {style}{:<5}{style:#} {}] {msg}",
                    buf.timestamp(),
                    record.level(),
                    record.target()
                )
            }
            LogFormat::Json => {
                let line = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "msg": msg,
                });
                writeln!(buf, "{line}")
            }
        }
    });
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crates_that_log_passwords_are_capped() {
        assert!(allowed("amiquip::io_loop", Level::Info));
        assert!(!allowed("amiquip::io_loop", Level::Debug));
        assert!(!allowed("amiquip", Level::Trace));
        assert!(allowed("suppaftp::sync_ftp", Level::Debug));
        assert!(!allowed("suppaftp::sync_ftp", Level::Trace));
        assert!(allowed("terawang::sink", Level::Trace));
        assert!(allowed("amiquipx", Level::Trace), "only the crate itself");
    }

    #[test]
    fn secrets_are_masked_and_control_characters_escaped() {
        redact("s3cret-pw-for-test");
        redact("abc");
        assert_eq!(
            clean("login with s3cret-pw-for-test failed"),
            "login with *** failed"
        );
        assert_eq!(
            clean("abc stays: too short to search"),
            "abc stays: too short to search"
        );
        assert_eq!(clean("a\nb\tc"), "a\\nb\\tc");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
