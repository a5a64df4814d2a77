//! A set's life, owned in one place: [`SetBook`] decides every transition of every complete
//! set, and the threads that do the I/O (the engine workers, the delivery threads) only carry
//! out what it hands them and report back to it.
//!
//! ```text
//! grouped ─► Queued ─take_job─► Computing ─saved─► Delivering(Saved) ─► Uploaded ─► Published
//!                                   │                  │  (each step: next_order, step_done)   │
//!                                   └─ not_saved       └─ result missing: released       Deleted:
//!                                      (released)         and grouped again              delivered
//! ```
//!
//! Pure: no I/O, no clock of its own (the caller passes `now`). The delivery steps follow
//! [`next_step`] over the configured [`Sinks`]; each step has its own [`Backoff`], so a sink
//! that is down holds only the sets that need it, and with `once` a set whose sink failed is
//! given up for this run (the journal keeps it). Each [`Lane`] (the FTP server, RabbitMQ, the
//! local disk) is one delivery thread with its own connections and carries one step at a
//! time, so one set's upload, another's publish and a third's delete overlap, while each set
//! still takes its steps one after the other. The journal lines are written by the thread that
//! did the step, after it succeeded; resuming from the journal enters a set here at its stage
//! ([`SetBook::resumed`]).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::group::TapSet;
use crate::journal::{Sinks, Stage, Step, next_step, stage_after};
use crate::sink::Backoff;

/// Where a set is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Complete, waiting for an engine worker.
    Queued,
    /// A worker reads, computes and saves it.
    Computing,
    /// Saved; the stage the journal has reached.
    Delivering(Stage),
    /// Given up for this run by `once`: the journal keeps it, its sources stay claimed.
    GivenUp,
}

/// How long each stage of one set took, for its log line and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SetTimings {
    pub read: Duration,
    pub compute: Duration,
    pub save: Duration,
    pub upload: Duration,
    pub publish: Duration,
    /// `false` for a set resumed from the journal (read, compute and save were another run's).
    pub computed_here: bool,
}

/// A delivery thread: the steps that talk to one kind of server, one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The upload and the raw archive.
    Ftp,
    /// The result's message and the viewer's.
    Amqp,
    /// Deleting the sources (and, for copies staged from the FTP source folder, their files on
    /// the server, over a connection of its own).
    Local,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Ftp, Lane::Amqp, Lane::Local];

    /// Its name, as in its thread's name (`delivery-<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Lane::Ftp => "ftp",
            Lane::Amqp => "amqp",
            Lane::Local => "local",
        }
    }

    /// The lane that carries `step`.
    pub fn of(step: Step) -> Lane {
        match step {
            Step::Upload | Step::Archive => Lane::Ftp,
            Step::Publish | Step::Announce => Lane::Amqp,
            Step::DeleteSources | Step::Save | Step::Done => Lane::Local,
        }
    }
}

/// One step for a delivery thread to do (the one of [`Lane::of`] its step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order<K> {
    pub result_name: String,
    pub step: Step,
    pub sources: Vec<K>,
}

/// What a delivery thread found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepResult {
    /// Done and journaled.
    Done,
    /// Failed (or could not be journaled): tried again after the step's backoff.
    Failed(String),
    /// The result file to upload is gone: the set is computed again.
    ResultMissing,
}

/// What the caller must do after a decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<K> {
    /// Hand this step to its lane's delivery thread.
    Do(Order<K>),
    /// The step failed; it is tried again in `wait`.
    Retry {
        result_name: String,
        step: Step,
        why: String,
        wait: Duration,
    },
    /// Every sink has it and the sources are gone: forget the sources.
    Delivered {
        result_name: String,
        sources: Vec<K>,
        timings: SetTimings,
    },
    /// Given up for this run (`once`); the journal keeps it, its sources stay claimed.
    Undelivered { result_name: String, why: String },
    /// Released without a result (not saved, or the result vanished): look at the sources
    /// again.
    Released {
        result_name: String,
        sources: Vec<K>,
    },
    /// Nothing to deliver: have every lane check that its sinks answer, then call
    /// [`SetBook::step_done`] for each.
    Probe,
}

/// Counts for the metrics and the idle check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: usize,
    pub computing: usize,
    pub delivering: usize,
}

struct Life<K> {
    phase: Phase,
    sources: Vec<K>,
    /// The set itself, while it waits for a worker.
    set: Option<TapSet<K>>,
    timings: SetTimings,
}

/// Every complete set the service holds, and what comes next for each.
pub struct SetBook<K> {
    sinks: Sinks,
    once: bool,
    sets: HashMap<String, Life<K>>,
    /// The set each claimed source belongs to.
    owner: HashMap<K, String>,
    queue: VecDeque<String>,
    /// Sets waiting for a delivery step, by step, oldest first.
    waiting: HashMap<Step, VecDeque<String>>,
    backoff: HashMap<Step, Backoff>,
    /// What each busy lane is doing.
    busy: HashMap<Lane, Busy>,
    /// How often idle delivery threads check the sinks (never with `once`), and when next.
    probe_every: Option<Duration>,
    next_probe: Option<Instant>,
}

enum Busy {
    Step(String, Step),
    Probe,
}

/// The delivery steps, latest first: a set near its end is finished before new ones start.
const STEPS: [Step; 5] = [
    Step::DeleteSources,
    Step::Announce,
    Step::Publish,
    Step::Archive,
    Step::Upload,
];

impl<K: Clone + Eq + Hash> SetBook<K> {
    /// `probe_every`: how often the sinks are checked while no set is being delivered (for
    /// the health status); `None` never.
    pub fn new(
        sinks: Sinks,
        retry_base: Duration,
        retry_max: Duration,
        once: bool,
        probe_every: Option<Duration>,
    ) -> Self {
        SetBook {
            sinks,
            once,
            sets: HashMap::new(),
            owner: HashMap::new(),
            queue: VecDeque::new(),
            waiting: STEPS.iter().map(|&s| (s, VecDeque::new())).collect(),
            backoff: STEPS
                .iter()
                .map(|&s| (s, Backoff::new(retry_base, retry_max)))
                .collect(),
            busy: HashMap::new(),
            probe_every,
            next_probe: None,
        }
    }

    /// A complete set from the grouper: queued for a worker, its sources claimed.
    pub fn grouped(&mut self, set: TapSet<K>) {
        let name = set.result_name().json();
        let sources: Vec<K> = set
            .members
            .iter()
            .map(|m| m.key.clone())
            .chain(set.survey.clone())
            .collect();
        self.claim(&name, &sources);
        self.sets.insert(
            name.clone(),
            Life {
                phase: Phase::Queued,
                sources,
                set: Some(set),
                timings: SetTimings::default(),
            },
        );
        self.queue.push_back(name);
    }

    /// A set the journal says was saved and reached `stage`.
    pub fn resumed(&mut self, result_name: String, sources: Vec<K>, stage: Stage) {
        self.claim(&result_name, &sources);
        self.sets.insert(
            result_name.clone(),
            Life {
                phase: Phase::Delivering(stage),
                sources,
                set: None,
                timings: SetTimings::default(),
            },
        );
        self.wait_for_next_step(result_name, stage);
    }

    fn claim(&mut self, name: &str, sources: &[K]) {
        for s in sources {
            self.owner.insert(s.clone(), name.to_string());
        }
    }

    fn release(&mut self, name: &str) -> Vec<K> {
        let Some(life) = self.sets.remove(name) else {
            return Vec::new();
        };
        for s in &life.sources {
            self.owner.remove(s);
        }
        life.sources
    }

    /// Whether `source` belongs to a set held here.
    pub fn is_claimed(&self, source: &K) -> bool {
        self.owner.contains_key(source)
    }

    /// The next queued set for a worker.
    pub fn take_job(&mut self) -> Option<TapSet<K>> {
        let name = self.queue.pop_front()?;
        let life = self.sets.get_mut(&name)?;
        life.phase = Phase::Computing;
        life.set.take()
    }

    /// A worker saved the set (and journaled it).
    pub fn saved(&mut self, result_name: &str, timings: SetTimings) {
        if let Some(life) = self.sets.get_mut(result_name) {
            life.phase = Phase::Delivering(Stage::Saved);
            life.timings = SetTimings {
                computed_here: true,
                ..timings
            };
            self.wait_for_next_step(result_name.to_string(), Stage::Saved);
        }
    }

    /// A worker could not compute or save the set, or some of its files could not be read:
    /// its sources are released.
    pub fn not_saved(&mut self, result_name: &str) -> Vec<K> {
        self.release(result_name)
    }

    fn wait_for_next_step(&mut self, name: String, stage: Stage) {
        let step = next_step(stage, self.sinks);
        if let Some(q) = self.waiting.get_mut(&step) {
            q.push_back(name);
        }
    }

    /// The next thing to do for delivery at `now`, on a lane that is free: a step whose
    /// backoff allows it, or (with `once`) giving up a set whose sink already failed. Call it
    /// until it returns `None`: each free lane may get a step.
    pub fn next_order(&mut self, now: Instant) -> Option<Event<K>> {
        if let Some(every) = self.probe_every
            && self.busy.is_empty()
            && self.waiting.values().all(VecDeque::is_empty)
            && self.next_probe.is_none_or(|t| now >= t)
        {
            self.next_probe = Some(now + every);
            for lane in Lane::ALL {
                self.busy.insert(lane, Busy::Probe);
            }
            return Some(Event::Probe);
        }
        for step in STEPS {
            let lane = Lane::of(step);
            if self.busy.contains_key(&lane) {
                continue;
            }
            let ready = self.backoff[&step].ready(now);
            if !ready && !self.once {
                continue;
            }
            let Some(name) = self.waiting.get_mut(&step).and_then(VecDeque::pop_front) else {
                continue;
            };
            if !ready {
                // `once`: each step is tried once per run; this one already failed.
                self.give_up(&name);
                return Some(Event::Undelivered {
                    result_name: name,
                    why: format!("{step:?} failed earlier in this run"),
                });
            }
            let sources = self.sets.get(&name).map(|l| l.sources.clone())?;
            self.busy.insert(lane, Busy::Step(name.clone(), step));
            return Some(Event::Do(Order {
                result_name: name,
                step,
                sources,
            }));
        }
        None
    }

    /// `lane` finished the step (or the probe) in flight. `took` is how long it ran.
    pub fn step_done(
        &mut self,
        lane: Lane,
        result: StepResult,
        took: Duration,
        now: Instant,
    ) -> Option<Event<K>> {
        let (name, step) = match self.busy.remove(&lane)? {
            Busy::Step(name, step) => (name, step),
            Busy::Probe => return None,
        };
        match result {
            StepResult::Done => {
                let backoff = self.backoff.get_mut(&step)?;
                backoff.succeeded();
                let life = self.sets.get_mut(&name)?;
                match step {
                    Step::Upload => life.timings.upload = took,
                    Step::Publish => life.timings.publish = took,
                    _ => {}
                }
                let stage = stage_after(step)?;
                life.phase = Phase::Delivering(stage);
                if stage == Stage::Deleted {
                    let timings = life.timings;
                    let sources = self.release(&name);
                    return Some(Event::Delivered {
                        result_name: name,
                        sources,
                        timings,
                    });
                }
                self.wait_for_next_step(name, stage);
                None
            }
            StepResult::Failed(why) => {
                let wait = self.backoff.get_mut(&step)?.failed(now);
                if self.once {
                    self.give_up(&name);
                    return Some(Event::Undelivered {
                        result_name: name,
                        why,
                    });
                }
                // Back at the front: the oldest set goes first when the sink is back.
                self.waiting.get_mut(&step)?.push_front(name.clone());
                Some(Event::Retry {
                    result_name: name,
                    step,
                    why,
                    wait,
                })
            }
            StepResult::ResultMissing => {
                let sources = self.release(&name);
                Some(Event::Released {
                    result_name: name,
                    sources,
                })
            }
        }
    }

    fn give_up(&mut self, name: &str) {
        if let Some(life) = self.sets.get_mut(name) {
            life.phase = Phase::GivenUp;
        }
    }

    /// The earliest moment a waiting step may be tried, if one waits on a backoff.
    pub fn next_wake(&self) -> Option<Instant> {
        STEPS
            .iter()
            .filter(|s| !self.waiting[s].is_empty())
            .filter_map(|s| self.backoff[s].next_try())
            .min()
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for life in self.sets.values() {
            match life.phase {
                Phase::Queued => c.queued += 1,
                Phase::Computing => c.computing += 1,
                Phase::Delivering(_) => c.delivering += 1,
                Phase::GivenUp => {}
            }
        }
        c
    }

    /// Nothing queued, computing or being delivered (sets given up by `once` do not count).
    pub fn is_idle(&self) -> bool {
        self.counts() == Counts::default() && self.busy.is_empty()
    }

    /// Where a set is, if it is held here.
    pub fn phase(&self, result_name: &str) -> Option<Phase> {
        self.sets.get(result_name).map(|l| l.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::TapName;
    use crate::group::Grouper;

    const BOTH: Sinks = Sinks::FTP_AND_AMQP;

    fn one_set(device: &str, t0: i64) -> TapSet<String> {
        let mut g = Grouper::new(900);
        for tap in 1..=8u8 {
            let name = TapName {
                device: Some(device.into()),
                upload_id: "u".into(),
                unix_s: t0 + tap as i64,
                tap,
            };
            g.add(name, format!("{device}-{tap}"));
        }
        g.take_complete().pop().unwrap()
    }

    fn book(once: bool) -> SetBook<String> {
        SetBook::new(
            BOTH,
            Duration::from_secs(1),
            Duration::from_secs(4),
            once,
            None,
        )
    }

    fn order(e: Option<Event<String>>) -> Order<String> {
        match e {
            Some(Event::Do(o)) => o,
            other => panic!("expected an order, got {other:?}"),
        }
    }

    #[test]
    fn a_set_walks_every_step_in_order_and_is_forgotten() {
        let t0 = Instant::now();
        let mut b = book(false);
        b.grouped(one_set("A", 100));
        assert!(b.is_claimed(&"A-3".to_string()));
        assert_eq!(b.counts().queued, 1);
        assert_eq!(b.next_order(t0), None, "nothing saved yet");
        let job = b.take_job().unwrap();
        let name = job.result_name().json();
        assert_eq!(b.phase(&name), Some(Phase::Computing));
        b.saved(&name, SetTimings::default());
        let mut steps = Vec::new();
        let delivered = loop {
            let o = order(b.next_order(t0));
            assert_eq!(b.next_order(t0), None, "one step at a time");
            steps.push(o.step);
            let took = Duration::from_millis(2);
            if let Some(e) = b.step_done(Lane::of(o.step), StepResult::Done, took, t0) {
                break e;
            }
        };
        assert_eq!(steps, [Step::Upload, Step::Publish, Step::DeleteSources]);
        let Event::Delivered {
            sources, timings, ..
        } = delivered
        else {
            panic!("{delivered:?}")
        };
        assert_eq!(sources.len(), 8);
        assert!(timings.computed_here);
        assert_eq!(timings.upload, Duration::from_millis(2));
        assert!(b.is_idle() && !b.is_claimed(&"A-3".to_string()));
    }

    #[test]
    fn a_failing_sink_holds_only_the_sets_that_need_it_and_retries_after_its_backoff() {
        let t0 = Instant::now();
        let mut b = book(false);
        // One set waits for its upload, one (resumed) only for its publish.
        b.grouped(one_set("A", 100));
        let a = b.take_job().unwrap().result_name().json();
        b.saved(&a, SetTimings::default());
        b.resumed(
            "result_B_1.json".into(),
            vec!["B-1".into()],
            Stage::Uploaded,
        );
        let first = order(b.next_order(t0));
        assert_eq!(
            (first.result_name.as_str(), first.step),
            ("result_B_1.json", Step::Publish),
            "the set nearest its end goes first"
        );
        // The FTP lane is free: A's upload goes while B's publish is in flight.
        let o = order(b.next_order(t0));
        assert_eq!((o.result_name.as_str(), o.step), (a.as_str(), Step::Upload));
        assert_eq!(b.next_order(t0), None, "each lane carries one step");
        let e = b.step_done(
            Lane::Amqp,
            StepResult::Failed("down".into()),
            Duration::ZERO,
            t0,
        );
        assert!(matches!(e, Some(Event::Retry { wait, .. }) if wait == Duration::from_secs(1)));
        assert_eq!(
            b.step_done(Lane::Ftp, StepResult::Done, Duration::ZERO, t0),
            None
        );
        assert_eq!(b.next_order(t0), None, "both now wait for the broker");
        assert_eq!(b.next_wake(), Some(t0 + Duration::from_secs(1)));
        let later = t0 + Duration::from_secs(1);
        let o = order(b.next_order(later));
        assert_eq!(o.result_name, "result_B_1.json", "the oldest first");
    }

    #[test]
    fn once_gives_up_a_set_whose_sink_failed_and_keeps_its_sources_claimed() {
        let t0 = Instant::now();
        let mut b = book(true);
        b.resumed("r1.json".into(), vec!["a".into()], Stage::Saved);
        b.resumed("r2.json".into(), vec!["b".into()], Stage::Saved);
        order(b.next_order(t0));
        let e = b.step_done(
            Lane::Ftp,
            StepResult::Failed("no FTP".into()),
            Duration::ZERO,
            t0,
        );
        assert!(matches!(e, Some(Event::Undelivered { .. })), "{e:?}");
        // The second set is not tried against the same failed sink.
        assert!(matches!(b.next_order(t0), Some(Event::Undelivered { .. })));
        assert!(b.is_idle());
        assert!(b.is_claimed(&"a".to_string()));
    }

    #[test]
    fn a_vanished_result_or_a_failed_save_releases_the_sources() {
        let t0 = Instant::now();
        let mut b = book(false);
        b.resumed("r1.json".into(), vec!["a".into()], Stage::Saved);
        order(b.next_order(t0));
        let e = b.step_done(Lane::Ftp, StepResult::ResultMissing, Duration::ZERO, t0);
        assert_eq!(
            e,
            Some(Event::Released {
                result_name: "r1.json".into(),
                sources: vec!["a".into()]
            })
        );
        assert!(!b.is_claimed(&"a".to_string()));
        b.grouped(one_set("C", 5));
        let name = b.take_job().unwrap().result_name().json();
        assert_eq!(b.not_saved(&name).len(), 8);
        assert!(b.is_idle());
    }

    #[test]
    fn an_idle_delivery_thread_probes_the_sinks_now_and_then() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut b: SetBook<String> = SetBook::new(
            BOTH,
            Duration::from_secs(1),
            Duration::from_secs(1),
            false,
            Some(every),
        );
        assert_eq!(b.next_order(t0), Some(Event::Probe));
        assert_eq!(b.next_order(t0), None, "every lane is probing");
        b.resumed("r.json".into(), vec!["a".into()], Stage::Saved);
        assert_eq!(
            b.step_done(Lane::Ftp, StepResult::Done, Duration::ZERO, t0),
            None
        );
        assert_eq!(
            order(b.next_order(t0)).step,
            Step::Upload,
            "work comes before probes, on the lane that is free"
        );
        for lane in [Lane::Amqp, Lane::Local] {
            assert_eq!(
                b.step_done(lane, StepResult::Done, Duration::ZERO, t0),
                None
            );
        }
        let mut lane = Lane::Ftp;
        while b
            .step_done(lane, StepResult::Done, Duration::ZERO, t0)
            .is_none()
        {
            lane = Lane::of(order(b.next_order(t0)).step);
        }
        assert_eq!(
            b.next_order(t0),
            None,
            "the next probe is 10 s after the last"
        );
        assert_eq!(b.next_order(t0 + every), Some(Event::Probe));
    }

    #[test]
    fn without_sinks_a_saved_set_only_deletes_its_sources() {
        let t0 = Instant::now();
        let none = Sinks::default();
        let mut b = SetBook::new(
            none,
            Duration::from_secs(1),
            Duration::from_secs(1),
            false,
            None,
        );
        b.resumed("r.json".into(), vec!["a".to_string()], Stage::Saved);
        assert_eq!(order(b.next_order(t0)).step, Step::DeleteSources);
        assert!(matches!(
            b.step_done(Lane::Local, StepResult::Done, Duration::ZERO, t0),
            Some(Event::Delivered { .. })
        ));
    }

    #[test]
    fn sets_at_different_steps_overlap_on_the_lanes_and_each_keeps_its_order() {
        let t0 = Instant::now();
        let mut b = book(false);
        b.resumed("r1.json".into(), vec!["a".into()], Stage::Published);
        b.resumed("r2.json".into(), vec!["b".into()], Stage::Uploaded);
        b.resumed("r3.json".into(), vec!["c".into()], Stage::Saved);
        b.resumed("r4.json".into(), vec!["d".into()], Stage::Saved);
        let mut in_flight = Vec::new();
        while let Some(e) = b.next_order(t0) {
            let o = order(Some(e));
            in_flight.push((o.result_name, o.step));
        }
        assert_eq!(
            in_flight,
            [
                ("r1.json".to_string(), Step::DeleteSources),
                ("r2.json".to_string(), Step::Publish),
                ("r3.json".to_string(), Step::Upload),
            ],
            "one step per lane, the set nearest its end first"
        );
        // r3's upload done: its publish waits for the broker's lane, r4's upload goes.
        assert_eq!(
            b.step_done(Lane::Ftp, StepResult::Done, Duration::ZERO, t0),
            None
        );
        let o = order(b.next_order(t0));
        assert_eq!((o.result_name.as_str(), o.step), ("r4.json", Step::Upload));
        assert_eq!(b.next_order(t0), None);
        assert_eq!(
            b.step_done(Lane::Amqp, StepResult::Done, Duration::ZERO, t0),
            None
        );
        let o = order(b.next_order(t0));
        assert_eq!(
            (o.result_name.as_str(), o.step),
            ("r3.json", Step::Publish),
            "r2 is done with the broker; r3 published before r4, which is still uploading"
        );
        assert!(matches!(
            b.step_done(Lane::Local, StepResult::Done, Duration::ZERO, t0),
            Some(Event::Delivered { result_name, .. }) if result_name == "r1.json"
        ));
        let o = order(b.next_order(t0));
        assert_eq!(
            (o.result_name.as_str(), o.step),
            ("r2.json", Step::DeleteSources)
        );
        assert!(!b.is_idle());
    }
}
