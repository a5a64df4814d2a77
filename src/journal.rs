//! The journal: which stage each set has reached, kept durably in `TEMP_DIR/journal.log`.
//!
//! A set moves Computed → Saved → Uploaded → Archived → Published → Announced → Deleted; the
//! steps whose sink is off are skipped (Archived: the raw tap files copied to the FTP raw
//! archive; Announced: the viewer's message on the graph queue). Each step is appended as one
//! line (`<stage> <result-name> [<source>…]`) *after* the step succeeded, so after a kill -9
//! the service redoes at most the step that was in flight: a result is uploaded or published
//! again (same idempotent name), never lost, and the eight sources are deleted only once every
//! sink has succeeded. A set the broker confirmed is journaled Published and is never
//! published again.
//!
//! Only the lines after a message the broker confirmed (Published, Announced) are fsynced
//! before the service goes on ([`Stage::needs_sync`]): a message sent twice reaches consumers
//! twice. The other steps are safe to do again (the same bytes saved, uploaded or archived
//! under the same name; deleting files that may be gone), so their lines reach the disk with
//! the next fsync: a power loss before it makes the service redo those steps, never skip one.
//! A kill -9 loses nothing either way (the lines are in the page cache). The result files
//! themselves are fsynced before they are renamed into place.
//!
//! [`JournalState`] and [`next_step`] are pure; [`Journal`] adds the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How far a set got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Sources claimed and the result computed (not yet on disk).
    Computed,
    /// Result file written in the result folder.
    Saved,
    /// Result uploaded to the FTP server.
    Uploaded,
    /// The eight raw tap files copied to the FTP raw archive (`FTP_FOLDER_DATA_ROW`).
    Archived,
    /// The broker confirmed the message.
    Published,
    /// The broker confirmed the viewer's message on the graph queue (`RABBITMQ_GRAPH_QUEUE`).
    Announced,
    /// Sources deleted: the set is done.
    Deleted,
}

impl Stage {
    /// Whether the line must be on disk before the service goes on: after a message the
    /// broker confirmed, which must never be sent again. The other steps can be redone.
    pub fn needs_sync(self) -> bool {
        matches!(self, Stage::Published | Stage::Announced)
    }

    fn as_str(self) -> &'static str {
        match self {
            Stage::Computed => "computed",
            Stage::Saved => "saved",
            Stage::Uploaded => "uploaded",
            Stage::Archived => "archived",
            Stage::Published => "published",
            Stage::Announced => "announced",
            Stage::Deleted => "deleted",
        }
    }

    fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "computed" => Stage::Computed,
            "saved" => Stage::Saved,
            "uploaded" => Stage::Uploaded,
            "archived" => Stage::Archived,
            "published" => Stage::Published,
            "announced" => Stage::Announced,
            "deleted" => Stage::Deleted,
            _ => return None,
        })
    }
}

/// Which sinks are configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sinks {
    pub ftp: bool,
    pub amqp: bool,
    /// The raw archive on the FTP server (`FTP_FOLDER_DATA_ROW`, with FTP).
    pub archive: bool,
    /// The viewer's message (`RABBITMQ_GRAPH_QUEUE`, with RabbitMQ).
    pub graph: bool,
}

/// What to do next for a set at `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Save,
    Upload,
    Archive,
    Publish,
    Announce,
    DeleteSources,
    Done,
}

/// The delivery steps in their order, with the stage each leads to. Upload comes before
/// publish so a consumer that gets the message finds the file on the FTP server, and the raw
/// archive before the viewer's message, which points the viewer at it.
const DELIVERY: [(Step, Stage); 5] = [
    (Step::Upload, Stage::Uploaded),
    (Step::Archive, Stage::Archived),
    (Step::Publish, Stage::Published),
    (Step::Announce, Stage::Announced),
    (Step::DeleteSources, Stage::Deleted),
];

impl Sinks {
    /// The upload and the result's message, as deployed (no raw archive, no viewer queue).
    pub const FTP_AND_AMQP: Sinks = Sinks {
        ftp: true,
        amqp: true,
        archive: false,
        graph: false,
    };

    fn wants(self, step: Step) -> bool {
        match step {
            Step::Upload => self.ftp,
            Step::Archive => self.ftp && self.archive,
            Step::Publish => self.amqp,
            Step::Announce => self.amqp && self.graph,
            Step::Save | Step::DeleteSources | Step::Done => true,
        }
    }
}

/// The next step after `stage`, skipping the sinks that are off.
pub fn next_step(stage: Stage, sinks: Sinks) -> Step {
    match stage {
        Stage::Computed => Step::Save,
        Stage::Deleted => Step::Done,
        _ => DELIVERY
            .iter()
            .find(|(step, reached)| *reached > stage && sinks.wants(*step))
            .map_or(Step::Done, |(step, _)| *step),
    }
}

/// The stage a step leads to.
pub fn stage_after(step: Step) -> Option<Stage> {
    match step {
        Step::Save => Some(Stage::Saved),
        Step::Done => None,
        _ => DELIVERY
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, stage)| *stage),
    }
}

/// One set in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRecord {
    pub stage: Stage,
    /// Source file names (bare), tap 1..=8.
    pub sources: Vec<String>,
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub stage: Stage,
    pub result_name: String,
    /// Only on `Computed` lines.
    pub sources: Vec<String>,
}

impl Entry {
    pub fn to_line(&self) -> String {
        let mut line = format!("{} {}", self.stage.as_str(), self.result_name);
        for s in &self.sources {
            line.push(' ');
            line.push_str(s);
        }
        line.push('\n');
        line
    }

    /// `None` for a torn or foreign line (a kill in the middle of an append).
    pub fn parse(line: &str) -> Option<Entry> {
        let mut fields = line.split_ascii_whitespace();
        let stage = Stage::parse(fields.next()?)?;
        let result_name = fields.next()?.to_string();
        let sources: Vec<String> = fields.map(str::to_string).collect();
        if stage == Stage::Computed && sources.is_empty() {
            return None;
        }
        Some(Entry {
            stage,
            result_name,
            sources,
        })
    }
}

/// All live sets, by result name. Pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalState {
    pub sets: BTreeMap<String, SetRecord>,
}

impl JournalState {
    /// Applies one entry. Stages only move forward; a `Computed` line starts a set afresh
    /// (the same result name computed again from new sources).
    pub fn apply(&mut self, e: &Entry) {
        match e.stage {
            Stage::Computed => {
                self.sets.insert(
                    e.result_name.clone(),
                    SetRecord {
                        stage: Stage::Computed,
                        sources: e.sources.clone(),
                    },
                );
            }
            Stage::Deleted => {
                self.sets.remove(&e.result_name);
            }
            stage => {
                if let Some(rec) = self.sets.get_mut(&e.result_name)
                    && stage > rec.stage
                {
                    rec.stage = stage;
                }
            }
        }
    }

    /// Replays a journal text; unparsable lines are skipped.
    pub fn replay(text: &str) -> JournalState {
        let mut state = JournalState::default();
        for e in text.lines().filter_map(Entry::parse) {
            state.apply(&e);
        }
        state
    }

    /// After a restart, sets only computed have no result on disk: forget them, their
    /// sources are still in place and will be grouped again.
    pub fn drop_unsaved(&mut self) {
        self.sets.retain(|_, r| r.stage >= Stage::Saved);
    }

    /// The lines that rebuild this state (for compaction).
    pub fn to_entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for (name, rec) in &self.sets {
            out.push(Entry {
                stage: Stage::Computed,
                result_name: name.clone(),
                sources: rec.sources.clone(),
            });
            if rec.stage > Stage::Computed {
                out.push(Entry {
                    stage: rec.stage,
                    result_name: name.clone(),
                    sources: Vec::new(),
                });
            }
        }
        out
    }
}

/// Appended lines after which the file is rewritten with the live sets only.
const COMPACT_AFTER: usize = 10_000;

/// The durable journal file.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    state: JournalState,
    appended: usize,
    compact_after: usize,
}

impl Journal {
    /// Opens `dir/journal.log`, replays it, forgets unsaved sets and rewrites it compacted.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        let path = dir.join("journal.log");
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut state = JournalState::replay(&text);
        state.drop_unsaved();
        let file = rewrite(&path, &state)?;
        Ok(Journal {
            path,
            file,
            state,
            appended: 0,
            compact_after: COMPACT_AFTER,
        })
    }

    /// Appends one entry (fsynced when [`Stage::needs_sync`]), then applies it. Every so many
    /// lines the file is rewritten with the live sets only, so a long run keeps it small.
    pub fn record(&mut self, e: &Entry) -> std::io::Result<()> {
        self.append(e, e.stage.needs_sync())
    }

    /// Appends one entry and fsyncs it whatever its stage: for a step that must not be
    /// redone after a power loss (`--role ingest`: the job the broker confirmed).
    pub fn record_synced(&mut self, e: &Entry) -> std::io::Result<()> {
        self.append(e, true)
    }

    fn append(&mut self, e: &Entry, sync: bool) -> std::io::Result<()> {
        self.file.write_all(e.to_line().as_bytes())?;
        if sync {
            self.file.sync_data()?;
        }
        self.state.apply(e);
        self.appended += 1;
        if self.appended >= self.compact_after {
            self.file = rewrite(&self.path, &self.state)?;
            self.appended = 0;
        }
        Ok(())
    }

    pub fn state(&self) -> &JournalState {
        &self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `state` to `path` through a temporary file and reopens it for appending.
fn rewrite(path: &Path, state: &JournalState) -> std::io::Result<std::fs::File> {
    let tmp = path.with_extension("log.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        for e in state.to_entries() {
            f.write_all(e.to_line().as_bytes())?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Sinks = Sinks::FTP_AND_AMQP;

    fn computed(name: &str) -> Entry {
        Entry {
            stage: Stage::Computed,
            result_name: name.into(),
            sources: (1..=8).map(|k| format!("d_u_1_{k}.json")).collect(),
        }
    }

    fn at(stage: Stage, name: &str) -> Entry {
        Entry {
            stage,
            result_name: name.into(),
            sources: vec![],
        }
    }

    #[test]
    fn steps_follow_the_configured_sinks() {
        assert_eq!(next_step(Stage::Computed, BOTH), Step::Save);
        assert_eq!(next_step(Stage::Saved, BOTH), Step::Upload);
        assert_eq!(next_step(Stage::Uploaded, BOTH), Step::Publish);
        assert_eq!(next_step(Stage::Published, BOTH), Step::DeleteSources);
        assert_eq!(next_step(Stage::Deleted, BOTH), Step::Done);
        let amqp_only = Sinks {
            amqp: true,
            ..Sinks::default()
        };
        assert_eq!(next_step(Stage::Saved, amqp_only), Step::Publish);
        let none = Sinks::default();
        assert_eq!(next_step(Stage::Saved, none), Step::DeleteSources);
        let ftp_only = Sinks {
            ftp: true,
            ..Sinks::default()
        };
        assert_eq!(next_step(Stage::Uploaded, ftp_only), Step::DeleteSources);
        let all = Sinks {
            ftp: true,
            amqp: true,
            archive: true,
            graph: true,
        };
        let mut stage = Stage::Saved;
        let mut steps = Vec::new();
        while next_step(stage, all) != Step::Done {
            let step = next_step(stage, all);
            steps.push(step);
            stage = stage_after(step).unwrap();
        }
        assert_eq!(
            steps,
            [
                Step::Upload,
                Step::Archive,
                Step::Publish,
                Step::Announce,
                Step::DeleteSources
            ]
        );
        // The archive needs FTP and the viewer's message RabbitMQ.
        let no_servers = Sinks {
            archive: true,
            graph: true,
            ..Sinks::default()
        };
        assert_eq!(next_step(Stage::Saved, no_servers), Step::DeleteSources);
    }

    #[test]
    fn lines_round_trip_and_torn_lines_are_skipped() {
        let e = computed("result_d_1.json");
        assert_eq!(Entry::parse(&e.to_line()), Some(e));
        assert_eq!(Entry::parse("published"), None);
        assert_eq!(Entry::parse("computed result_x.json"), None);
        assert_eq!(Entry::parse("sav"), None);
    }

    #[test]
    fn replay_keeps_only_live_sets_and_never_goes_back() {
        let mut text = String::new();
        for e in [
            computed("a.json"),
            at(Stage::Saved, "a.json"),
            at(Stage::Published, "a.json"),
            at(Stage::Saved, "a.json"),
            computed("b.json"),
            at(Stage::Saved, "b.json"),
            at(Stage::Deleted, "b.json"),
            computed("c.json"),
        ] {
            text.push_str(&e.to_line());
        }
        text.push_str("uploa");
        let mut s = JournalState::replay(&text);
        assert_eq!(s.sets.len(), 2);
        assert_eq!(s.sets["a.json"].stage, Stage::Published);
        assert_eq!(next_step(s.sets["a.json"].stage, BOTH), Step::DeleteSources);
        s.drop_unsaved();
        assert_eq!(s.sets.keys().collect::<Vec<_>>(), vec!["a.json"]);
        let again = JournalState::replay(
            &s.to_entries()
                .iter()
                .map(Entry::to_line)
                .collect::<String>(),
        );
        assert_eq!(again, s);
    }

    #[test]
    fn file_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.record(&computed("a.json")).unwrap();
            j.record(&at(Stage::Saved, "a.json")).unwrap();
            j.record(&at(Stage::Uploaded, "a.json")).unwrap();
            j.record(&computed("b.json")).unwrap();
        }
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.state().sets.len(), 1);
        assert_eq!(j.state().sets["a.json"].stage, Stage::Uploaded);
        assert_eq!(j.state().sets["a.json"].sources.len(), 8);
        // Compaction keeps the live set and drops the finished ones.
        j.compact_after = 3;
        j.record(&computed("c.json")).unwrap();
        j.record(&at(Stage::Saved, "c.json")).unwrap();
        j.record(&at(Stage::Deleted, "c.json")).unwrap();
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(JournalState::replay(&text), *j.state());
    }
}
