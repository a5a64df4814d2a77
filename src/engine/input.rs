//! The engine's input: the samples and sample times of a set's eight taps, validated once.
//!
//! A [`Recording`] is one tap: eight channels of raw ADC counts (`channels[k]` is sensor k,
//! 0-based) and one timestamp per sample in nanoseconds, all of one length, the timestamps
//! strictly increasing. A [`SetInput`] is the eight recordings of a set, `recordings[k]` the tap
//! on sensor k. Nothing here knows where the samples came from: file names, guids and device
//! ids stay with the reader ([`crate::device`]). Building either never panics; a recording that
//! breaks a rule is an [`InputError`] naming the rule.

use crate::geometry::N_SENSORS;

/// Fewer samples than this cannot hold a first arrival and its context.
pub const MIN_SAMPLES: usize = 64;

/// Why samples are no valid input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InputError {
    /// Channels are numbered from 1, as on the device.
    #[error("channel {channel} has {found} samples, the timestamps {expected}")]
    LengthMismatch {
        channel: usize,
        found: usize,
        expected: usize,
    },
    #[error("only {found} samples, at least {min} are needed")]
    TooFewSamples { found: usize, min: usize },
    #[error("timestamps do not increase at sample {index} ({prev} then {next} ns)")]
    TimestampsNotIncreasing { index: usize, prev: i64, next: i64 },
    /// Channels are numbered from 1, as on the device.
    #[error("channel {channel} sample {index} is not a finite number")]
    NonFiniteSample { channel: usize, index: usize },
    #[error("a set holds {expected} recordings, got {found}")]
    WrongCount { found: usize, expected: usize },
}

/// One tap: every channel as recorded after one sensor was hit, and the sample times.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    channels: [Vec<f32>; N_SENSORS],
    timestamps_ns: Vec<i64>,
}

impl Recording {
    /// Checks the rules of the input: every channel as long as the timestamps, at least
    /// [`MIN_SAMPLES`] samples, strictly increasing timestamps, finite samples.
    pub fn new(
        channels: [Vec<f32>; N_SENSORS],
        timestamps_ns: Vec<i64>,
    ) -> Result<Recording, InputError> {
        let n = timestamps_ns.len();
        if let Some((k, c)) = channels.iter().enumerate().find(|(_, c)| c.len() != n) {
            return Err(InputError::LengthMismatch {
                channel: k + 1,
                found: c.len(),
                expected: n,
            });
        }
        if n < MIN_SAMPLES {
            return Err(InputError::TooFewSamples {
                found: n,
                min: MIN_SAMPLES,
            });
        }
        // Each rule is first checked over the whole vector without stopping (which
        // vectorises), and the first offence is looked for only where there is one.
        let increasing = timestamps_ns
            .windows(2)
            .fold(true, |all, w| all & (w[1] > w[0]));
        if !increasing {
            let i = timestamps_ns
                .windows(2)
                .position(|w| w[1] <= w[0])
                .expect("a pair out of order was seen");
            return Err(InputError::TimestampsNotIncreasing {
                index: i + 1,
                prev: timestamps_ns[i],
                next: timestamps_ns[i + 1],
            });
        }
        for (k, c) in channels.iter().enumerate() {
            if c.iter().fold(true, |all, x| all & x.is_finite()) {
                continue;
            }
            if let Some(index) = c.iter().position(|x| !x.is_finite()) {
                return Err(InputError::NonFiniteSample {
                    channel: k + 1,
                    index,
                });
            }
        }
        Ok(Recording {
            channels,
            timestamps_ns,
        })
    }

    /// `channels()[k]` is sensor k (0-based), raw ADC counts.
    pub fn channels(&self) -> &[Vec<f32>; N_SENSORS] {
        &self.channels
    }

    /// Sample times in nanoseconds, strictly increasing, as long as each channel.
    pub fn timestamps_ns(&self) -> &[i64] {
        &self.timestamps_ns
    }

    pub fn n_samples(&self) -> usize {
        self.timestamps_ns.len()
    }

    /// Mean sampling interval from the timestamps, in microseconds.
    pub fn mean_dt_us(&self) -> f64 {
        let n = self.timestamps_ns.len();
        (self.timestamps_ns[n - 1] - self.timestamps_ns[0]) as f64 / (n - 1) as f64 / 1000.0
    }

    /// The channels and the timestamps, for a caller that wants the vectors back.
    pub fn into_parts(self) -> ([Vec<f32>; N_SENSORS], Vec<i64>) {
        (self.channels, self.timestamps_ns)
    }
}

/// The eight taps of a set: `recordings()[k]` is the tap on sensor k (0-based). Recordings
/// may differ in length and sampling interval.
#[derive(Clone, Debug, PartialEq)]
pub struct SetInput {
    recordings: [Recording; N_SENSORS],
}

impl SetInput {
    pub fn new(recordings: [Recording; N_SENSORS]) -> SetInput {
        SetInput { recordings }
    }

    pub fn recordings(&self) -> &[Recording; N_SENSORS] {
        &self.recordings
    }

    pub fn into_recordings(self) -> [Recording; N_SENSORS] {
        self.recordings
    }
}

impl TryFrom<Vec<Recording>> for SetInput {
    type Error = InputError;

    /// Eight recordings, the tap on sensor 1 first.
    fn try_from(recordings: Vec<Recording>) -> Result<SetInput, InputError> {
        let found = recordings.len();
        <[Recording; N_SENSORS]>::try_from(recordings)
            .map(SetInput::new)
            .map_err(|_| InputError::WrongCount {
                found,
                expected: N_SENSORS,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(n: usize) -> Vec<i64> {
        (0..n as i64).map(|k| 1_000 + 27_000 * k).collect()
    }

    fn channels(n: usize) -> [Vec<f32>; N_SENSORS] {
        std::array::from_fn(|k| vec![2100.0 + k as f32; n])
    }

    #[test]
    fn a_valid_recording_keeps_its_samples_and_gives_its_interval() {
        let r = Recording::new(channels(100), times(100)).unwrap();
        assert_eq!(r.n_samples(), 100);
        assert_eq!(r.channels()[3][0], 2103.0);
        assert!((r.mean_dt_us() - 27.0).abs() < 1e-12);
        let (c, t) = r.into_parts();
        assert_eq!((c, t), (channels(100), times(100)));
    }

    #[test]
    fn each_broken_rule_is_named() {
        let mut short = channels(100);
        short[5].truncate(99);
        assert_eq!(
            Recording::new(short, times(100)),
            Err(InputError::LengthMismatch {
                channel: 6,
                found: 99,
                expected: 100
            })
        );
        assert_eq!(
            Recording::new(channels(0), Vec::new()),
            Err(InputError::TooFewSamples {
                found: 0,
                min: MIN_SAMPLES
            })
        );
        let mut t = times(100);
        t[40] = t[39];
        assert_eq!(
            Recording::new(channels(100), t.clone()),
            Err(InputError::TimestampsNotIncreasing {
                index: 40,
                prev: t[39],
                next: t[39]
            })
        );
        let mut nan = channels(100);
        nan[0][7] = f32::NAN;
        assert_eq!(
            Recording::new(nan, times(100)),
            Err(InputError::NonFiniteSample {
                channel: 1,
                index: 7
            })
        );
    }

    #[test]
    fn a_set_holds_exactly_eight_recordings() {
        let r = Recording::new(channels(64), times(64)).unwrap();
        let set = SetInput::try_from(vec![r.clone(); N_SENSORS]).unwrap();
        assert_eq!(set.recordings()[7], r);
        assert_eq!(
            SetInput::try_from(vec![r; 7]),
            Err(InputError::WrongCount {
                found: 7,
                expected: N_SENSORS
            })
        );
    }
}
