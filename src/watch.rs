//! Watching `DATA_DIR`: file events in, settled tap files out.
//!
//! [`Watcher`] owns the notify watcher; its callback only forwards the paths of events into a
//! channel (a file renamed in yields Modify(Name(To)), one written in place yields Create then
//! Close(Write); both end up as a path to look at). [`Settle`] is the pure debouncer: a file
//! is handed on only after its size and modification time have stayed the same for the settle
//! time, so a file still being written is never read. [`classify`] decides which names are
//! tap files; [`reject`] sets a bad file aside in `rejected/` with a `.reason.txt`, never
//! deleting it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::device::TapName;
use crate::survey::SurveyName;

/// Subfolder of `DATA_DIR` for files that cannot be read.
pub const REJECTED_DIR: &str = "rejected";

/// Subfolder of `TEMP_DIR` where the files of the FTP source folder are staged.
pub const STAGING_DIR: &str = "ftp-source";

/// How the journal labels a source staged from the FTP source folder: `ftp:<name>`.
pub const REMOTE_PREFIX: &str = "ftp:";

/// Subfolder of `TEMP_DIR` where a worker (`run --role worker`) stages the files of its jobs.
pub const JOBS_DIR: &str = "jobs";

/// How the journal labels a source staged from a job: `job:<name>`.
pub const JOB_PREFIX: &str = "job:";

/// The local folders whose files the service takes: `DATA_DIR`, and the staging folder of
/// the FTP source folder when that is on. A source's journal label is its bare name, or
/// `ftp:<name>` for a staged one.
#[derive(Clone, Debug)]
pub struct Roots {
    pub data: PathBuf,
    /// `TEMP_DIR/ftp-source` (labels `ftp:` always resolve there, even with the source off).
    pub staging: PathBuf,
    /// Whether `FTP_SOURCE_FOLDER` is on (the staging folder is watched).
    pub remote: bool,
    /// `TEMP_DIR/jobs`: the files of a worker's jobs (never watched: a job is a set already).
    pub jobs: PathBuf,
}

impl Roots {
    /// The folders whose files are taken.
    pub fn all(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.data.as_path()).chain(self.remote.then_some(self.staging.as_path()))
    }

    /// The folder `path` lies directly in, if it is one of [`Roots::all`].
    pub fn root_of(&self, path: &Path) -> Option<&Path> {
        let parent = path.parent()?;
        self.all().find(|r| *r == parent)
    }

    /// Whether `path` is a copy staged from the FTP source folder.
    pub fn is_remote(&self, path: &Path) -> bool {
        path.parent() == Some(self.staging.as_path())
    }

    /// Whether `path` is a file staged from a job.
    pub fn is_job(&self, path: &Path) -> bool {
        path.parent() == Some(self.jobs.as_path())
    }

    /// The journal's label of a source.
    pub fn label(&self, path: &Path) -> String {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.is_remote(path) {
            format!("{REMOTE_PREFIX}{name}")
        } else if self.is_job(path) {
            format!("{JOB_PREFIX}{name}")
        } else {
            name
        }
    }

    /// The path of a journal label.
    pub fn resolve(&self, label: &str) -> PathBuf {
        if let Some(name) = label.strip_prefix(REMOTE_PREFIX) {
            self.staging.join(name)
        } else if let Some(name) = label.strip_prefix(JOB_PREFIX) {
            self.jobs.join(name)
        } else {
            self.data.join(label)
        }
    }
}

/// What the watcher forwards.
#[derive(Debug)]
pub enum WatchEvent {
    /// Something happened to this path: look at it.
    Path(PathBuf),
    /// notify reported an error or lost events: the folders are listed again.
    Error(String),
}

/// Owns the notify watcher; dropping it stops the events.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

impl Watcher {
    /// Watches `dir` (not recursively) and calls `forward` with each path an event names,
    /// and with each error.
    pub fn start(
        dir: &Path,
        forward: impl Fn(WatchEvent) + Send + 'static,
    ) -> notify::Result<Watcher> {
        let mut inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let event = match res {
                Ok(event) => event,
                Err(e) => return forward(WatchEvent::Error(e.to_string())),
            };
            if event.need_rescan() {
                // The kernel's event queue overflowed: events were lost.
                return forward(WatchEvent::Error("the file event queue overflowed".into()));
            }
            if matches!(event.kind, EventKind::Access(a) if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write))
            {
                return;
            }
            for path in event.paths {
                forward(WatchEvent::Path(path));
            }
        })?;
        inner.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Watcher { _inner: inner })
    }
}

/// What identifies one version of a file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSig {
    pub len: u64,
    pub modified: SystemTime,
}

impl FileSig {
    /// `None` when the path is missing or not a plain file (a symbolic link is not followed).
    pub fn of(path: &Path) -> Option<FileSig> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        Some(FileSig {
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
}

/// Debounces files until they stop changing. Pure: the caller supplies signatures and time.
#[derive(Debug)]
pub struct Settle {
    settle: Duration,
    files: HashMap<PathBuf, (FileSig, Instant)>,
}

impl Settle {
    pub fn new(settle: Duration) -> Settle {
        Settle {
            settle,
            files: HashMap::new(),
        }
    }

    /// Records what `path` looks like at `now` (`None`: gone, forget it).
    pub fn observe(&mut self, path: &Path, sig: Option<FileSig>, now: Instant) {
        match sig {
            None => {
                self.files.remove(path);
            }
            Some(sig) => match self.files.get_mut(path) {
                Some((old, since)) if *old != sig => {
                    *old = sig;
                    *since = now;
                }
                Some(_) => {}
                None => {
                    self.files.insert(path.to_path_buf(), (sig, now));
                }
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files being tracked.
    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// Files being tracked, for the caller to look at again.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.keys().cloned().collect()
    }

    /// Takes out the files unchanged for the settle time, sorted by path.
    pub fn take_settled(&mut self, now: Instant) -> Vec<(PathBuf, FileSig)> {
        let mut done: Vec<(PathBuf, FileSig)> = self
            .files
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= self.settle)
            .map(|(p, (sig, _))| (p.clone(), *sig))
            .collect();
        for (p, _) in &done {
            self.files.remove(p);
        }
        done.sort_by(|a, b| a.0.cmp(&b.0));
        done
    }
}

/// What a path in the data folder is.
#[derive(Debug, PartialEq)]
pub enum Kind {
    Tap(TapName),
    /// A survey file, `<device>_<unix-seconds>_survey.json`.
    Survey(SurveyName),
    /// Not for us: the reason, logged once.
    Ignored(String),
}

/// Classifies a path by name alone: only tap and survey names directly in `data_dir`.
pub fn classify(data_dir: &Path, path: &Path) -> Kind {
    if path.parent() != Some(data_dir) {
        return Kind::Ignored("not directly in the data folder".into());
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Kind::Ignored("the name is not UTF-8".into());
    };
    if name.starts_with('.') {
        return Kind::Ignored("hidden file".into());
    }
    if !name.ends_with(".json") {
        return Kind::Ignored("not a .json file".into());
    }
    if let Some(survey) = SurveyName::parse(name) {
        return Kind::Survey(survey);
    }
    match TapName::parse(name) {
        Ok(t) => Kind::Tap(t),
        Err(e) => Kind::Ignored(e.to_string()),
    }
}

/// Why an existing entry named like a tap cannot be read as one: it is not a regular file.
/// A symbolic link is never followed (it could lead out of the data folder), and a FIFO
/// would block its reader. `None` for a regular file or a missing one.
pub fn not_a_regular_file(path: &Path) -> Option<String> {
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    let what = if kind.is_file() {
        return None;
    } else if kind.is_symlink() {
        "a symbolic link (never followed)"
    } else if kind.is_dir() {
        "a directory"
    } else {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device file"
        }
    };
    Some(format!("it is not a regular file but {what}"))
}

/// Moves `path` into `data_dir/rejected/` and writes `<name>.reason.txt` beside it.
pub fn reject(
    data_dir: &Path,
    path: &Path,
    why: &dyn std::fmt::Display,
) -> std::io::Result<PathBuf> {
    let dir = data_dir.join(REJECTED_DIR);
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let dst = dir.join(name);
    let mut reason = name.to_os_string();
    reason.push(".reason.txt");
    std::fs::write(dir.join(reason), format!("{why}\n"))?;
    std::fs::rename(path, &dst)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(len: u64) -> Option<FileSig> {
        Some(FileSig {
            len,
            modified: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn a_file_settles_only_after_it_stops_changing() {
        let t0 = Instant::now();
        let s3 = Duration::from_secs(3);
        let mut s = Settle::new(s3);
        let p = Path::new("/d/a_u_1_1.json");
        s.observe(p, sig(10), t0);
        s.observe(p, sig(20), t0 + Duration::from_secs(2));
        assert!(s.take_settled(t0 + s3).is_empty());
        s.observe(p, sig(20), t0 + Duration::from_secs(4));
        assert_eq!(s.take_settled(t0 + Duration::from_secs(5)).len(), 1);
        assert!(s.is_empty());
        s.observe(p, sig(20), t0);
        s.observe(p, None, t0);
        assert!(s.take_settled(t0 + s3 * 10).is_empty());
    }

    #[test]
    fn entries_that_are_not_regular_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a_u_1_1.json");
        std::fs::write(&file, "[]").unwrap();
        assert_eq!(not_a_regular_file(&file), None);
        assert_eq!(not_a_regular_file(&dir.path().join("missing")), None);
        let link = dir.path().join("a_u_1_2.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(not_a_regular_file(&link).unwrap().contains("symbolic link"));
        assert_eq!(FileSig::of(&link), None, "a link is not followed");
        let sub = dir.path().join("a_u_1_3.json");
        std::fs::create_dir(&sub).unwrap();
        assert!(not_a_regular_file(&sub).unwrap().contains("directory"));
        let moved = reject(dir.path(), &sub, &"a test").unwrap();
        assert!(moved.is_dir());
        let reason = dir
            .path()
            .join(REJECTED_DIR)
            .join("a_u_1_3.json.reason.txt");
        assert_eq!(std::fs::read_to_string(reason).unwrap(), "a test\n");
    }

    #[test]
    fn journal_labels_name_the_folder_of_a_source() {
        let roots = Roots {
            data: PathBuf::from("/d"),
            staging: PathBuf::from("/t/ftp-source"),
            remote: true,
            jobs: PathBuf::from("/t/jobs"),
        };
        for path in [
            "/d/a_u_1_1.json",
            "/t/ftp-source/a_u_1_1.json",
            "/t/jobs/a_u_1_1.json",
        ] {
            let path = Path::new(path);
            assert_eq!(roots.resolve(&roots.label(path)), path);
        }
        assert_eq!(roots.label(Path::new("/t/ftp-source/x.json")), "ftp:x.json");
        assert_eq!(
            roots.root_of(Path::new("/t/ftp-source/x.json")),
            Some(Path::new("/t/ftp-source"))
        );
        assert_eq!(roots.root_of(Path::new("/t/x.json")), None);
        let local_only = Roots {
            remote: false,
            ..roots
        };
        assert_eq!(local_only.root_of(Path::new("/t/ftp-source/x.json")), None);
    }

    #[test]
    fn only_tap_names_directly_inside_count() {
        let d = Path::new("/d");
        assert!(matches!(
            classify(d, Path::new("/d/1755752474_3.json")),
            Kind::Tap(_)
        ));
        assert!(matches!(
            classify(d, Path::new("/d/dev-1_1755752474_survey.json")),
            Kind::Survey(_)
        ));
        for p in [
            "/d/.hidden_1_2.json",
            "/d/notes.txt",
            "/d/rejected/1755752474_3.json",
            "/d/garbage.json",
            "/d/rejected/dev-1_1755752474_survey.json",
        ] {
            assert!(matches!(classify(d, Path::new(p)), Kind::Ignored(_)), "{p}");
        }
    }
}
