//! The FTP source folder (`FTP_SOURCE_FOLDER`): the taps and survey files the devices upload
//! to the FTP server.
//!
//! [`RemoteSource`] lists the folder every `FTP_POLL_SECONDS` (MLSD, or NLST and SIZE where
//! the server has no MLSD). A file counts as complete once two listings in a row show the same
//! size; it is then downloaded (binary) into the staging folder `TEMP_DIR/ftp-source/` under a
//! hidden name, renamed, and handed to the coordinator, which takes it like a file of
//! `DATA_DIR`: the same settling, reading, grouping and rejecting (one code path). The journal
//! labels a staged source `ftp:<name>` ([`crate::watch::Roots`]), and deleting it after
//! delivery removes the file on the server first, then the staged copy ([`delete_remote`]).
//!
//! A staged file the coordinator rejects goes to `ftp-source/rejected/` with its reason, as a
//! local one goes to `DATA_DIR/rejected/`. Each cycle moves those on the server into
//! `FTP_SOURCE_FOLDER/rejected/`, with `<name>.reason.txt` beside them, and then removes the
//! local copy. Where the server refuses, its file stays, the refusal is logged once, and the
//! local copy stays as the mark that keeps the file from being downloaded again.
//!
//! Nothing here deletes a file on the server except [`delete_remote`], which the delivery
//! thread calls only after every sink took the set.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use suppaftp::FtpError;

use crate::config::FtpConfig;
use crate::device::{MAX_FILE_BYTES, TapName};
use crate::metrics::{Metrics, SinkKind};
use crate::sink::{Backoff, FtpSink};
use crate::survey::SurveyName;
use crate::watch::REJECTED_DIR;

/// One plain file of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

/// Parses one MLSD line (`type=file;size=123;modify=…; name`); `None` for anything that is
/// not a plain file with a size.
pub fn parse_mlsd_line(line: &str) -> Option<Listed> {
    let (facts, name) = line.split_once(' ')?;
    let name = base_name(name.trim_end_matches(['\r', '\n']));
    let mut is_file = false;
    let mut size = None;
    for fact in facts.split(';') {
        let Some((key, value)) = fact.split_once('=') else {
            continue;
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => is_file = value.eq_ignore_ascii_case("file"),
            "size" => size = value.parse().ok(),
            _ => {}
        }
    }
    if !is_file || name.is_empty() {
        return None;
    }
    Some(Listed {
        name: name.to_string(),
        size: size?,
    })
}

/// The last component of a name a server listed (some list `folder/name`).
fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Whether a listed name is one the service takes: a tap file or a survey file.
pub fn wanted(name: &str) -> bool {
    !name.starts_with('.')
        && name.ends_with(".json")
        && (TapName::parse(name).is_ok() || SurveyName::parse(name).is_some())
}

/// The unix seconds a tap or survey file's name gives.
fn unix_seconds(name: &str) -> i64 {
    match TapName::parse(name) {
        Ok(tap) => tap.unix_s,
        Err(_) => SurveyName::parse(name).map_or(i64::MAX, |s| s.unix_s),
    }
}

/// The reply code of a refusal by the server, if `e` is one.
fn reply_code(e: &FtpError) -> Option<u32> {
    match e {
        FtpError::UnexpectedResponse(r) => Some(r.status.code()),
        _ => None,
    }
}

/// Whether `name` exists on the server (SIZE answers for plain files only).
fn remote_exists(ftp: &mut suppaftp::RustlsFtpStream, name: &str) -> anyhow::Result<bool> {
    match ftp.size(name) {
        Ok(_) => Ok(true),
        Err(e) if reply_code(&e) == Some(550) => Ok(false),
        Err(e) => Err(anyhow::Error::from(e).context(format!("SIZE {name}"))),
    }
}

/// Deletes `name` in the sink's folder; a file already gone counts as deleted.
pub fn delete_remote(ftp: &mut FtpSink, name: &str) -> anyhow::Result<()> {
    ftp.with_conn(|c| match c.rm(name) {
        Ok(()) => Ok(()),
        Err(e) if reply_code(&e) == Some(550) => {
            if remote_exists(c, name)? {
                anyhow::bail!("the FTP server refuses to delete {name}: {e}");
            }
            Ok(())
        }
        Err(e) => Err(anyhow::Error::from(e).context(format!("cannot delete {name}"))),
    })
}

/// How the folder is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListWith {
    Mlsd,
    /// The server has no MLSD.
    NlstSize,
}

/// What moving a rejected file aside on the server came to.
enum MoveAside {
    Moved,
    /// Already gone from the folder.
    Gone,
    /// The server refused (its reply).
    Refused(String),
}

/// Handle of the polling thread; dropping it stops the thread (waiting up to 3 s for a
/// transfer in progress; one hanging on the server is left behind, nothing is lost).
pub struct RemoteSource {
    stop: Arc<AtomicBool>,
    /// Listings tried so far (whether or not the server answered).
    listings: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Settings of the polling thread.
pub struct RemoteConfig {
    /// The FTP server, with `folder` set to the source folder.
    pub ftp: FtpConfig,
    /// `TEMP_DIR/ftp-source`.
    pub staging: PathBuf,
    pub poll: Duration,
    pub retry_max: Duration,
}

impl RemoteSource {
    /// Starts polling; `forward` gets the path of each staged file.
    pub fn spawn(
        cfg: RemoteConfig,
        metrics: Arc<Metrics>,
        forward: impl Fn(PathBuf) + Send + 'static,
    ) -> anyhow::Result<RemoteSource> {
        let rejected = cfg.staging.join(REJECTED_DIR);
        std::fs::create_dir_all(&rejected)
            .with_context(|| format!("TEMP_DIR: cannot create {}", rejected.display()))?;
        remove_partial_downloads(&cfg.staging);
        let stop = Arc::new(AtomicBool::new(false));
        let listings = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let listings = listings.clone();
            std::thread::Builder::new()
                .name("ftp-source".into())
                .spawn(move || {
                    let mut poller = Poller {
                        ftp: FtpSink::new(cfg.ftp.clone()),
                        folder: cfg.ftp.folder.clone(),
                        staging: cfg.staging,
                        list_with: ListWith::Mlsd,
                        previous: HashMap::new(),
                        taken: HashSet::new(),
                        refused: HashSet::new(),
                        failing: None,
                        metrics,
                        forward: Box::new(forward),
                    };
                    let base = Duration::from_millis(500).min(cfg.poll);
                    let mut backoff = Backoff::new(base, cfg.retry_max.max(base));
                    while !stop.load(Ordering::Relaxed) {
                        let wait = match poller.cycle(&stop) {
                            Ok(()) => {
                                poller.healthy();
                                backoff.succeeded();
                                cfg.poll
                            }
                            Err(e) => {
                                poller.ftp.disconnect();
                                let wait = backoff.failed(Instant::now());
                                poller.failed(&e, wait);
                                wait
                            }
                        };
                        listings.fetch_add(1, Ordering::Release);
                        let until = Instant::now() + wait;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                })?
        };
        Ok(RemoteSource {
            stop,
            listings,
            thread: Some(thread),
        })
    }

    /// How many listings were tried so far; the files the first `n` found were handed on
    /// before this returns `n`.
    pub fn listings(&self) -> u64 {
        self.listings.load(Ordering::Acquire)
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// Removes the hidden partial downloads a killed run left in the staging folder.
fn remove_partial_downloads(staging: &Path) {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".part") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

struct Poller {
    ftp: FtpSink,
    folder: String,
    staging: PathBuf,
    list_with: ListWith,
    /// Sizes of the wanted files in the previous listing.
    previous: HashMap<String, u64>,
    /// Names downloaded (or staged) while the server still lists them: never fetched again,
    /// even by a listing made just before the delivery deleted them.
    taken: HashSet<String>,
    /// Rejected files whose move on the server was refused (logged once).
    refused: HashSet<String>,
    /// The outage being logged, if any.
    failing: Option<String>,
    metrics: Arc<Metrics>,
    forward: Box<dyn Fn(PathBuf) + Send>,
}

impl Poller {
    /// One listing: moves rejected files aside on the server, then downloads the files
    /// whose size did not change since the previous listing.
    fn cycle(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        self.push_rejected()?;
        let mut listed = self.list()?;
        // Oldest first, as the devices made them: a set completes before the next one of its
        // device, so no file of it arrives after a later set formed (it would be a leftover).
        listed.sort_by_cached_key(|f| (unix_seconds(&f.name), f.name.clone()));
        let names: HashSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
        self.taken.retain(|n| names.contains(n.as_str()));
        let mut sizes = HashMap::with_capacity(listed.len());
        let rejected = self.staging.join(REJECTED_DIR);
        for f in &listed {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            sizes.insert(f.name.clone(), f.size);
            let staged = self.staging.join(&f.name);
            if staged.exists() || rejected.join(&f.name).exists() {
                self.taken.insert(f.name.clone());
                continue;
            }
            if self.taken.contains(&f.name) || self.previous.get(&f.name) != Some(&f.size) {
                continue;
            }
            if f.size > MAX_FILE_BYTES {
                // Not downloaded: an empty mark with the reason is moved aside next cycle.
                let why = format!(
                    "{} bytes on the FTP server, larger than the {MAX_FILE_BYTES}-byte limit",
                    f.size
                );
                std::fs::write(rejected.join(format!("{}.reason.txt", f.name)), why + "\n")?;
                std::fs::write(rejected.join(&f.name), b"")?;
                continue;
            }
            let bytes = self.ftp.with_conn(|c| {
                Ok(c.retr_as_buffer(&f.name)
                    .with_context(|| format!("cannot download {}", f.name))?
                    .into_inner())
            })?;
            if bytes.len() as u64 != f.size {
                // Still being written: taken at a later listing.
                sizes.remove(&f.name);
                continue;
            }
            self.stage(&f.name, &bytes)?;
            self.taken.insert(f.name.clone());
            log::debug!(
                "downloaded {} ({} bytes) from {}",
                f.name,
                bytes.len(),
                self.folder
            );
            (self.forward)(staged);
        }
        self.previous = sizes;
        Ok(())
    }

    /// Writes a downloaded file into the staging folder: a hidden name, synced, renamed.
    fn stage(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let part = self.staging.join(format!(".{name}.part"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&part)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&part, self.staging.join(name))
        };
        write().with_context(|| format!("cannot stage {name} in {}", self.staging.display()))
    }

    /// The wanted plain files of the source folder, with their sizes.
    fn list(&mut self) -> anyhow::Result<Vec<Listed>> {
        let mut list_with = self.list_with;
        let listed = self.ftp.with_conn(|c| {
            if list_with == ListWith::Mlsd {
                match c.mlsd(None) {
                    Ok(lines) => {
                        return Ok(lines
                            .iter()
                            .filter_map(|l| parse_mlsd_line(l))
                            .filter(|f| wanted(&f.name))
                            .collect());
                    }
                    // 500-504: the server has no MLSD.
                    Err(e) if reply_code(&e).is_some_and(|c| (500..=504).contains(&c)) => {
                        log::info!("the FTP server has no MLSD ({e}); listing with NLST and SIZE");
                        list_with = ListWith::NlstSize;
                    }
                    Err(e) => return Err(anyhow::Error::from(e).context("MLSD")),
                }
            }
            let names = match c.nlst(None) {
                Ok(names) => names,
                // Some servers answer an empty folder with 450 or 550.
                Err(e) if matches!(reply_code(&e), Some(450 | 550)) => Vec::new(),
                Err(e) => return Err(anyhow::Error::from(e).context("NLST")),
            };
            let mut listed = Vec::new();
            for name in names.iter().map(|n| base_name(n.trim_end())) {
                if !wanted(name) {
                    continue;
                }
                match c.size(name) {
                    Ok(size) => listed.push(Listed {
                        name: name.to_string(),
                        size: size as u64,
                    }),
                    // Gone since the listing, or not a plain file.
                    Err(e) if reply_code(&e) == Some(550) => {}
                    Err(e) => return Err(anyhow::Error::from(e).context(format!("SIZE {name}"))),
                }
            }
            Ok(listed)
        });
        self.list_with = list_with;
        listed.with_context(|| format!("cannot list {} on the FTP server", self.folder))
    }

    /// Moves each file the coordinator rejected aside on the server, with its reason.
    fn push_rejected(&mut self) -> anyhow::Result<()> {
        let dir = self.staging.join(REJECTED_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".reason.txt") && !n.starts_with('.'))
            .filter(|n| !self.refused.contains(n))
            .collect();
        names.sort();
        for name in names {
            let reason_file = dir.join(format!("{name}.reason.txt"));
            let reason = std::fs::read_to_string(&reason_file).unwrap_or_default();
            let outcome = self.ftp.with_conn(|c| move_aside(c, &name, &reason))?;
            match outcome {
                MoveAside::Moved | MoveAside::Gone => {
                    if matches!(outcome, MoveAside::Moved) {
                        log::warn!(
                            "rejected {name} moved to {}/{REJECTED_DIR}/ on the FTP server",
                            self.folder
                        );
                    }
                    let _ = std::fs::remove_file(dir.join(&name));
                    let _ = std::fs::remove_file(&reason_file);
                }
                MoveAside::Refused(why) => {
                    log::warn!(
                        "rejected {name}: the FTP server refuses to move it to {}/{REJECTED_DIR}/ ({why}); it stays in {} and is not taken again",
                        self.folder,
                        self.folder
                    );
                    self.refused.insert(name);
                }
            }
        }
        Ok(())
    }

    fn healthy(&mut self) {
        if let Some(was) = self.failing.take() {
            log::info!("the FTP source folder answers again (after: {was})");
        }
        self.metrics.sink_status(SinkKind::FtpSource, Ok(()));
    }

    fn failed(&mut self, e: &anyhow::Error, wait: Duration) {
        let why = format!("{e:#}");
        self.metrics.sink_retry(SinkKind::FtpSource);
        self.metrics
            .sink_status(SinkKind::FtpSource, Err(why.clone()));
        if self.failing.as_deref() != Some(why.as_str()) {
            log::warn!(
                "FTP source folder {}: {why}; retrying in {:.1} s",
                self.folder,
                wait.as_secs_f64()
            );
            self.failing = Some(why);
        }
    }
}

/// Moves `name` into `rejected/` on the server, with `<name>.reason.txt` beside it.
fn move_aside(
    ftp: &mut suppaftp::RustlsFtpStream,
    name: &str,
    reason: &str,
) -> anyhow::Result<MoveAside> {
    // Fails harmlessly where the folder exists.
    let _ = ftp.mkdir(REJECTED_DIR);
    let part = format!("{REJECTED_DIR}/.{name}.reason.txt.part");
    let reason_name = format!("{REJECTED_DIR}/{name}.reason.txt");
    let stored = ftp
        .put_file(&part, &mut std::io::Cursor::new(reason.as_bytes()))
        .map(|_| ())
        .and_then(|()| ftp.rename(part.as_str(), reason_name.as_str()));
    if let Err(e) = stored {
        return match reply_code(&e) {
            Some(_) => Ok(MoveAside::Refused(format!("storing its reason: {e}"))),
            None => Err(e.into()),
        };
    }
    match ftp.rename(name.to_string(), format!("{REJECTED_DIR}/{name}")) {
        Ok(()) => Ok(MoveAside::Moved),
        Err(e) if reply_code(&e).is_some() => {
            if remote_exists(ftp, name)? {
                Ok(MoveAside::Refused(e.to_string()))
            } else {
                Ok(MoveAside::Gone)
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlsd_lines_give_plain_files_with_their_sizes() {
        assert_eq!(
            parse_mlsd_line("type=file;size=25515;modify=20261204120000; d_u_1755752474_1.json"),
            Some(Listed {
                name: "d_u_1755752474_1.json".into(),
                size: 25515
            })
        );
        assert_eq!(
            parse_mlsd_line("Type=File;Size=3;UNIX.mode=0644; /terawang/a b.json\r\n"),
            Some(Listed {
                name: "a b.json".into(),
                size: 3
            })
        );
        for line in [
            "type=dir;modify=20261204120000; rejected",
            "type=cdir; .",
            "type=file;modify=20261204120000; no_size.json",
            "no facts at all",
        ] {
            assert_eq!(parse_mlsd_line(line), None, "{line}");
        }
    }

    #[test]
    fn only_tap_and_survey_names_are_taken() {
        assert!(wanted("20-79-18-81-6E-65_u1_1755752474_3.json"));
        assert!(wanted("1755752474_3.json"));
        assert!(wanted("20-79-18-81-6E-65_1755752474_survey.json"));
        for name in [
            ".20-79-18-81-6E-65_u1_1755752474_3.json.part",
            "notes.txt",
            "result_d_1.json",
            "rejected",
        ] {
            assert!(!wanted(name), "{name}");
        }
    }
}
