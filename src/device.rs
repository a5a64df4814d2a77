//! Device files: the name pattern and the JSON content of one tap.
//!
//! A tap file is named `<device>_<upload-id>_<unix-seconds>_<tap>.json` (or the legacy
//! `<unix-seconds>_<tap>.json`) and holds a JSON array of objects: `valueK` (channel K, raw
//! 12-bit ADC counts) with its `guid`, `timestamp` (one per sample, nanoseconds) and
//! `guidteensy`. Objects may come in any order; unknown keys are ignored.
//!
//! [`read_tap_file`] and [`parse_tap`] turn a file into a [`TapRecording`] or a [`ReadError`]
//! that names the file and what is wrong. They never panic, whatever the bytes. A
//! [`TapRecording`] is the file's own data ([`TapFile`]: name, guids, warnings) and its samples
//! as the engine takes them ([`Recording`]); [`SetRecording`] splits a set's eight into the
//! engine's [`SetInput`] and the files the reports name.
//!
//! Two parsers share the work: the fast scanner in `scan` reads the device's own layout
//! (integer arrays, plain strings) straight into the sample vectors; anything else falls back
//! to the general simd-json path, which also names every JSON and per-value error. Both feed
//! the same checks across objects, so the result never depends on which one read the file.

use std::fmt;
use std::path::{Path, PathBuf};

use simd_json::BorrowedValue;
use simd_json::StaticNode;
use simd_json::prelude::ValueAsScalar;

mod scan;

use crate::engine::{InputError, Recording, SetInput};

pub use crate::engine::MIN_SAMPLES;
pub use crate::geometry::N_SENSORS;

/// Files larger than this are rejected before they are read.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// What the file name says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TapName {
    /// Device id (first field); `None` for legacy `<unix>_<tap>.json` names.
    pub device: Option<String>,
    /// Upload id (the middle field), empty for legacy names.
    pub upload_id: String,
    /// When the file was made, unix seconds.
    pub unix_s: i64,
    /// The tapped sensor, 1..=8.
    pub tap: u8,
}

impl TapName {
    /// Parses a bare file name (no directories). Device and upload ids may only hold ASCII
    /// letters, digits, `-` and `.` (not leading), so a name can never address another folder.
    pub fn parse(file_name: &str) -> Result<TapName, ReadErrorKind> {
        let bad = |why: &str| ReadErrorKind::BadName(why.to_string());
        let stem = file_name
            .strip_suffix(".json")
            .ok_or_else(|| bad("it does not end in .json"))?;
        let fields: Vec<&str> = stem.split('_').collect();
        let (device, upload_id, unix, tap) = match fields.as_slice() {
            [unix, tap] => (None, "", *unix, *tap),
            [device, upload, unix, tap] => (Some(*device), *upload, *unix, *tap),
            _ => {
                return Err(bad(
                    "expected <device>_<upload-id>_<unix-seconds>_<tap>.json or <unix-seconds>_<tap>.json",
                ));
            }
        };
        if let Some(device) = device {
            if !safe_id(device) {
                return Err(bad(
                    "the device id must be ASCII letters, digits, '-' or '.' (not first, last or twice in a row)",
                ));
            }
            if !safe_id(upload_id) {
                return Err(bad(
                    "the upload id must be ASCII letters, digits, '-' or '.' (not first, last or twice in a row)",
                ));
            }
        }
        if unix.is_empty() || unix.len() > 12 || !unix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the unix seconds field is not a number"));
        }
        let unix_s: i64 = unix
            .parse()
            .map_err(|_| bad("the unix seconds field is not a number"))?;
        if tap.is_empty() || tap.len() > 6 || !tap.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the tap field is not a number"));
        }
        let tap_n: u32 = tap
            .parse()
            .map_err(|_| bad("the tap field is not a number"))?;
        if !(1..=N_SENSORS as u32).contains(&tap_n) {
            return Err(ReadErrorKind::TapOutOfRange(tap_n));
        }
        Ok(TapName {
            device: device.map(str::to_string),
            upload_id: upload_id.to_string(),
            unix_s,
            tap: tap_n as u8,
        })
    }

    /// Names a file on disk: the device pattern, or the bench recordings' `ketuk<K>.json`
    /// ("tap K"), which carry neither device nor time: the folder's name stands for the device
    /// (letters, digits, `-` and `.` kept, the rest `-`) and the file's modification time for
    /// the time.
    pub fn from_path(path: &Path) -> Result<TapName, ReadErrorKind> {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ReadErrorKind::BadName("not valid UTF-8".into()))?;
        let err = match TapName::parse(file_name) {
            Ok(name) => return Ok(name),
            Err(e) => e,
        };
        let Some(tap) = file_name
            .strip_prefix("ketuk")
            .and_then(|s| s.strip_suffix(".json"))
            .filter(|s| !s.is_empty() && s.len() < 6 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            return Err(err);
        };
        if !(1..=N_SENSORS as u32).contains(&tap) {
            return Err(ReadErrorKind::TapOutOfRange(tap));
        }
        let folder = path
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let mut device: String = folder
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        device = device.trim_start_matches('.').to_string();
        if device.is_empty() {
            device = "bench".into();
        }
        let unix_s = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        Ok(TapName {
            device: Some(device),
            upload_id: String::new(),
            unix_s,
            tap: tap as u8,
        })
    }
}

/// Whether `s` is safe as one component of a file name: ASCII letters, digits, `-` and `.`,
/// with no `.` first, last or twice in a row (so never `.`, `..` or a hidden name).
pub(crate) fn safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// What a tap file says besides its samples: its name, the guids, and what was odd in it.
#[derive(Clone, Debug, PartialEq)]
pub struct TapFile {
    /// The file name it came from (no directories).
    pub file_name: String,
    pub name: TapName,
    /// The guid given with each channel, if any.
    pub guids: [Option<String>; N_SENSORS],
    pub guid_teensy: Option<String>,
    /// Non-fatal oddities found while reading (for logs and reports).
    pub warnings: Vec<String>,
}

impl TapFile {
    /// Index (0-based) of the tapped channel.
    pub fn tap_idx(&self) -> usize {
        self.name.tap as usize - 1
    }
}

/// One tap file, read: the file's own data, and its samples as the engine takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct TapRecording {
    pub file: TapFile,
    /// All eight channels and the sample times, validated ([`Recording::new`]).
    pub recording: Recording,
}

impl TapRecording {
    /// Index (0-based) of the tapped channel.
    pub fn tap_idx(&self) -> usize {
        self.file.tap_idx()
    }
}

/// The eight files of a set, read: what the reports say about each file, and the engine's
/// input. `files[k]` and the input's recording k are the tap on sensor k.
#[derive(Clone, Debug, PartialEq)]
pub struct SetRecording {
    pub files: [TapFile; N_SENSORS],
    pub input: SetInput,
}

/// Eight taps that are not in tap order.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file_name} is the tap on sensor {tap}, in the place of the tap on sensor {place}")]
pub struct TapOutOfPlace {
    pub file_name: String,
    pub tap: usize,
    pub place: usize,
}

impl SetRecording {
    /// Splits eight taps, the tap on sensor 1 first, into their files and the engine's input.
    pub fn from_taps(taps: [TapRecording; N_SENSORS]) -> Result<SetRecording, TapOutOfPlace> {
        if let Some((k, tap)) = taps.iter().enumerate().find(|(k, t)| t.tap_idx() != *k) {
            return Err(TapOutOfPlace {
                file_name: tap.file.file_name.clone(),
                tap: tap.tap_idx() + 1,
                place: k + 1,
            });
        }
        // Moved out field by field: no sample is copied.
        let [t0, t1, t2, t3, t4, t5, t6, t7] = taps;
        Ok(SetRecording {
            files: [
                t0.file, t1.file, t2.file, t3.file, t4.file, t5.file, t6.file, t7.file,
            ],
            input: SetInput::new([
                t0.recording,
                t1.recording,
                t2.recording,
                t3.recording,
                t4.recording,
                t5.recording,
                t6.recording,
                t7.recording,
            ]),
        })
    }
}

/// What is wrong with a file, without the file's path.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReadErrorKind {
    #[error("cannot read it: {0}")]
    Io(String),
    #[error("it is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("the name does not match the pattern: {0}")]
    BadName(String),
    #[error("the tap number {0} is outside 1-8")]
    TapOutOfRange(u32),
    #[error("the file is empty")]
    Empty,
    #[error("invalid or truncated JSON: {0}")]
    Json(String),
    #[error("the top level is not an array of objects")]
    NotAnArrayOfObjects,
    #[error("channel value{0} is missing")]
    MissingChannel(usize),
    #[error("channel value{0} appears twice")]
    DuplicateChannel(usize),
    #[error("the timestamp array is missing")]
    MissingTimestamps,
    #[error("{field} is not an array")]
    NotAnArray { field: String },
    #[error("{field}[{index}] is not a number")]
    NonNumeric { field: String, index: usize },
    #[error("only {found} samples, at least {min} are needed")]
    TooFewSamples { found: usize, min: usize },
    #[error("timestamp[{index}] = {value} is outside 0 to 2^63 ns")]
    TimestampOutOfRange { index: usize, value: f64 },
    #[error("timestamps do not increase at sample {index} ({prev} then {next} ns)")]
    TimestampsNotIncreasing { index: usize, prev: i64, next: i64 },
    /// The samples break another rule of the engine's input ([`Recording::new`]).
    #[error("{0}")]
    Samples(InputError),
}

impl From<InputError> for ReadErrorKind {
    fn from(e: InputError) -> ReadErrorKind {
        match e {
            InputError::TooFewSamples { found, min } => ReadErrorKind::TooFewSamples { found, min },
            InputError::TimestampsNotIncreasing { index, prev, next } => {
                ReadErrorKind::TimestampsNotIncreasing { index, prev, next }
            }
            other => ReadErrorKind::Samples(other),
        }
    }
}

/// A file that could not be read, with its path.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadError {
    pub path: PathBuf,
    pub kind: ReadErrorKind,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for ReadError {}

/// Reads and validates one tap file.
pub fn read_tap_file(path: &Path) -> Result<TapRecording, ReadError> {
    let err = |kind| ReadError {
        path: path.to_path_buf(),
        kind,
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| err(ReadErrorKind::BadName("not valid UTF-8".into())))?;
    let name = TapName::from_path(path).map_err(err)?;
    use std::io::Read;
    // One open and one fstat: the path is looked up once.
    let io = |e: std::io::Error| err(ReadErrorKind::Io(e.to_string()));
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    check_size(size).map_err(err)?;
    // A file still growing is read up to one byte past the limit, which is then seen.
    let mut bytes = Vec::with_capacity(size as usize + 1);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    check_size(bytes.len() as u64).map_err(err)?;
    parse_content(file_name, name, &bytes).map_err(err)
}

/// A tap file of `size` bytes is refused over [`MAX_FILE_BYTES`].
fn check_size(size: u64) -> Result<(), ReadErrorKind> {
    if size > MAX_FILE_BYTES {
        return Err(ReadErrorKind::TooLarge {
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(())
}

/// Parses the content of a file called `file_name` (the name is validated too).
pub fn parse_tap(file_name: &str, bytes: &[u8]) -> Result<TapRecording, ReadErrorKind> {
    let name = TapName::parse(file_name)?;
    check_size(bytes.len() as u64)?;
    parse_content(file_name, name, bytes)
}

fn parse_content(
    file_name: &str,
    name: TapName,
    bytes: &[u8],
) -> Result<TapRecording, ReadErrorKind> {
    check_not_empty(bytes)?;
    let raw = match scan::scan(bytes) {
        Some(raw) => raw,
        None => parse_general(bytes)?,
    };
    raw.finish(file_name, name)
}

fn check_not_empty(bytes: &[u8]) -> Result<(), ReadErrorKind> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ReadErrorKind::Empty);
    }
    Ok(())
}

/// What the objects of a file hold, before the checks across them.
#[derive(Debug, Default)]
struct RawTap {
    channels: [Option<Vec<f32>>; N_SENSORS],
    timestamps: Option<Vec<i64>>,
    guids: [Option<String>; N_SENSORS],
    guid_teensy: Option<String>,
}

/// The general path: any JSON, through simd-json's borrowed value. It decides every input
/// the fast scanner leaves to it and names every error.
fn parse_general(bytes: &[u8]) -> Result<RawTap, ReadErrorKind> {
    let mut owned = bytes.to_vec();
    let value = simd_json::to_borrowed_value(&mut owned).map_err(|_| json_error(bytes))?;
    let BorrowedValue::Array(objects) = value else {
        return Err(ReadErrorKind::NotAnArrayOfObjects);
    };
    let mut raw = RawTap::default();
    for object in objects.iter() {
        let BorrowedValue::Object(object) = object else {
            return Err(ReadErrorKind::NotAnArrayOfObjects);
        };
        let mut channel_here = None;
        let mut guid_here = None;
        for (key, value) in object.iter() {
            let key: &str = key;
            if let Some(k) = key
                .strip_prefix("value")
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| (1..=N_SENSORS).contains(k))
            {
                if raw.channels[k - 1].is_some() {
                    return Err(ReadErrorKind::DuplicateChannel(k));
                }
                raw.channels[k - 1] = Some(numbers(key, value, |x| x as f32)?);
                channel_here = Some(k);
            } else if key == "timestamp" {
                let ts = numbers(key, value, |x| x)?;
                // Past i64 a value would saturate and read as "not increasing". (The fast
                // scanner leaves numbers that long to this path; negative ones are caught in
                // `finish`, for both.)
                if let Some(index) = ts.iter().position(|&x| x >= I64_LIMIT) {
                    return Err(ReadErrorKind::TimestampOutOfRange {
                        index,
                        value: ts[index],
                    });
                }
                raw.timestamps = Some(ts.into_iter().map(|x| x as i64).collect());
            } else if key == "guid" {
                guid_here = value.as_str().map(str::to_string);
            } else if key == "guidteensy" {
                raw.guid_teensy = value.as_str().map(str::to_string);
            }
        }
        if let (Some(k), Some(guid)) = (channel_here, guid_here) {
            raw.guids[k - 1] = Some(guid);
        }
    }
    Ok(raw)
}

/// 2^63 as f64: the first value an i64 cannot hold.
const I64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// Names what is wrong with text that is not valid JSON. simd-json's messages point at
/// character 0 of a file cut in half, so serde_json, which says where and what, names it; a
/// document that ends inside an open array, object or string is called truncated.
fn json_error(bytes: &[u8]) -> ReadErrorKind {
    let why = match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Err(e) if e.is_eof() => format!(
            "the file ends after {} bytes with the JSON still open (truncated?): {e}",
            bytes.len()
        ),
        Err(e) => e.to_string(),
        // simd-json refused what serde_json takes (e.g. nesting past its limit).
        Ok(_) => "simd-json cannot parse it".to_string(),
    };
    ReadErrorKind::Json(why)
}

impl RawTap {
    /// The checks across objects: every channel and the timestamps present, equal lengths
    /// (else cut, with a warning), enough samples, increasing timestamps.
    fn finish(self, file_name: &str, name: TapName) -> Result<TapRecording, ReadErrorKind> {
        let RawTap {
            mut channels,
            timestamps,
            guids,
            guid_teensy,
        } = self;
        let mut timestamps_ns = timestamps.ok_or(ReadErrorKind::MissingTimestamps)?;
        let mut warnings = Vec::new();
        let mut taken: [Vec<f32>; N_SENSORS] = Default::default();
        for (k, slot) in channels.iter_mut().enumerate() {
            taken[k] = slot.take().ok_or(ReadErrorKind::MissingChannel(k + 1))?;
        }
        let lengths = taken.iter().map(Vec::len).chain([timestamps_ns.len()]);
        let shortest = lengths.clone().min().unwrap_or(0);
        let longest = lengths.max().unwrap_or(0);
        if shortest != longest {
            warnings.push(format!(
                "arrays of unequal length ({shortest} to {longest} samples): cut to {shortest}"
            ));
            for ch in &mut taken {
                ch.truncate(shortest);
            }
            timestamps_ns.truncate(shortest);
        }
        if let Some(index) = timestamps_ns.iter().position(|&t| t < 0) {
            return Err(ReadErrorKind::TimestampOutOfRange {
                index,
                value: timestamps_ns[index] as f64,
            });
        }
        let recording = Recording::new(taken, timestamps_ns)?;
        Ok(TapRecording {
            file: TapFile {
                file_name: file_name.to_string(),
                name,
                guids,
                guid_teensy,
                warnings,
            },
            recording,
        })
    }
}

/// Reads a JSON array of numbers, converting each with `conv`; integers are exact, finite
/// floats are accepted, anything else is [`ReadErrorKind::NonNumeric`].
fn numbers<T>(
    field: &str,
    value: &BorrowedValue,
    conv: impl Fn(f64) -> T,
) -> Result<Vec<T>, ReadErrorKind> {
    let BorrowedValue::Array(items) = value else {
        return Err(ReadErrorKind::NotAnArray {
            field: field.to_string(),
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let x = match item {
                BorrowedValue::Static(StaticNode::I64(x)) => *x as f64,
                BorrowedValue::Static(StaticNode::U64(x)) => *x as f64,
                BorrowedValue::Static(StaticNode::F64(x)) if x.is_finite() => *x,
                _ => {
                    return Err(ReadErrorKind::NonNumeric {
                        field: field.to_string(),
                        index,
                    });
                }
            };
            Ok(conv(x))
        })
        .collect()
}

/// Writes a tap file in the device's layout (used by the simulator and tests).
pub fn write_tap_json(
    channels: &[Vec<i32>; N_SENSORS],
    timestamps_ns: &[i64],
    guids: &[String; N_SENSORS],
    guid_teensy: &str,
) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(32 * 1024);
    out.push('[');
    for (k, ch) in channels.iter().enumerate() {
        let _ = write!(out, "{{\"value{}\":[", k + 1);
        join_numbers(&mut out, ch.iter());
        let _ = write!(out, "],\"guid\":\"{}\"}},", guids[k]);
    }
    out.push_str("{\"timestamp\":[");
    join_numbers(&mut out, timestamps_ns.iter());
    let _ = write!(out, "]}},{{\"guidteensy\":\"{guid_teensy}\"}}]");
    out
}

fn join_numbers<T: fmt::Display>(out: &mut String, items: impl Iterator<Item = T>) {
    use std::fmt::Write;
    for (i, x) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const NAME: &str = "20-79-18-81-6E-65_7a55cee9-5a00-468c-a081-2bbcb16bf4a2_1755752474_3.json";

    fn sample_json(n: usize) -> String {
        let channels: [Vec<i32>; N_SENSORS] = std::array::from_fn(|k| {
            (0..n)
                .map(|i| 2000 + (i * 7 + k * 13) as i32 % 300)
                .collect()
        });
        let ts: Vec<i64> = (0..n as i64).map(|i| 346_229_149 + 27_000 * i).collect();
        let guids: [String; N_SENSORS] = std::array::from_fn(|k| format!("g{k}"));
        write_tap_json(&channels, &ts, &guids, "teensy")
    }

    fn kind(json: &str) -> ReadErrorKind {
        parse_tap(NAME, json.as_bytes()).unwrap_err()
    }

    #[test]
    fn reads_a_well_formed_file() {
        let tap = parse_tap(NAME, sample_json(100).as_bytes()).unwrap();
        assert_eq!(tap.file.name.device.as_deref(), Some("20-79-18-81-6E-65"));
        assert_eq!(
            tap.file.name.upload_id,
            "7a55cee9-5a00-468c-a081-2bbcb16bf4a2"
        );
        assert_eq!(tap.file.name.unix_s, 1_755_752_474);
        assert_eq!(tap.file.name.tap, 3);
        assert_eq!(tap.tap_idx(), 2);
        assert_eq!(tap.recording.n_samples(), 100);
        assert_eq!(tap.recording.channels()[1][0], 2013.0);
        assert_eq!(tap.file.guids[7].as_deref(), Some("g7"));
        assert_eq!(tap.file.guid_teensy.as_deref(), Some("teensy"));
        assert!((tap.recording.mean_dt_us() - 27.0).abs() < 1e-9);
        assert!(tap.file.warnings.is_empty());
    }

    #[test]
    fn objects_may_come_in_any_order_and_unknown_keys_are_ignored() {
        let doc: serde_json::Value = serde_json::from_str(&sample_json(80)).unwrap();
        let mut objects = doc.as_array().unwrap().clone();
        objects.reverse();
        objects.push(serde_json::json!({"firmware": "1.2"}));
        let text = serde_json::to_string(&objects).unwrap();
        let a = parse_tap(NAME, text.as_bytes()).unwrap();
        let b = parse_tap(NAME, sample_json(80).as_bytes()).unwrap();
        assert_eq!(a.recording, b.recording);
        assert_eq!(a.file.guids, b.file.guids);
    }

    #[test]
    fn a_set_splits_into_its_files_and_the_engines_input_in_tap_order() {
        let read = |tap: usize| {
            let name = format!("20-79-18-81-6E-65_7a55cee9_1755752474_{tap}.json");
            parse_tap(&name, sample_json(64 + tap).as_bytes()).unwrap()
        };
        let set = SetRecording::from_taps(std::array::from_fn(|k| read(k + 1))).unwrap();
        for k in 0..N_SENSORS {
            assert_eq!(set.files[k], read(k + 1).file);
            assert_eq!(set.input.recordings()[k], read(k + 1).recording);
        }
        let mut swapped: [TapRecording; N_SENSORS] = std::array::from_fn(|k| read(k + 1));
        swapped.swap(1, 2);
        let e = SetRecording::from_taps(swapped).unwrap_err();
        assert_eq!((e.tap, e.place), (3, 2));
        assert!(
            e.to_string().contains("_3.json is the tap on sensor 3"),
            "{e}"
        );
    }

    #[test]
    fn a_number_beyond_the_samples_range_is_rejected() {
        // 1e39 is a finite JSON number but no f32: the engine's input takes finite samples only.
        let mut doc: serde_json::Value = serde_json::from_str(&sample_json(100)).unwrap();
        doc[1]["value2"][5] = serde_json::json!(1e39);
        assert_eq!(
            kind(&doc.to_string()),
            ReadErrorKind::Samples(InputError::NonFiniteSample {
                channel: 2,
                index: 5
            })
        );
    }

    #[test]
    fn unequal_lengths_are_cut_to_the_shortest_with_a_warning() {
        let mut doc: serde_json::Value = serde_json::from_str(&sample_json(100)).unwrap();
        doc[4]["value5"].as_array_mut().unwrap().truncate(90);
        let tap = parse_tap(NAME, doc.to_string().as_bytes()).unwrap();
        assert_eq!(tap.recording.n_samples(), 90);
        assert!(tap.recording.channels().iter().all(|c| c.len() == 90));
        assert_eq!(tap.file.warnings.len(), 1);
        assert!(
            tap.file.warnings[0].contains("cut to 90"),
            "{:?}",
            tap.file.warnings
        );
    }

    #[test]
    fn each_content_error_is_named() {
        assert_eq!(kind(""), ReadErrorKind::Empty);
        assert!(matches!(kind("[{\"value1\": [1,2"), ReadErrorKind::Json(_)));
        assert!(matches!(kind("not json"), ReadErrorKind::Json(_)));
        let full = sample_json(100);
        let half = kind(&full[..full.len() / 2]);
        let text = half.to_string();
        assert!(
            text.contains("truncated") && !text.contains("character 0"),
            "{text}"
        );
        let garbage = kind("[{\"value1\": [1, 2,, 3]}]").to_string();
        assert!(garbage.contains("column"), "{garbage}");
        assert_eq!(kind("{\"a\": 1}"), ReadErrorKind::NotAnArrayOfObjects);
        assert_eq!(kind("[1, 2]"), ReadErrorKind::NotAnArrayOfObjects);

        let mut doc: serde_json::Value = serde_json::from_str(&sample_json(100)).unwrap();
        let objects = doc.as_array_mut().unwrap();
        let without = |skip: &str| -> String {
            let kept: Vec<_> = objects
                .iter()
                .filter(|o| o.get(skip).is_none())
                .cloned()
                .collect();
            serde_json::to_string(&kept).unwrap()
        };
        assert_eq!(kind(&without("value6")), ReadErrorKind::MissingChannel(6));
        assert_eq!(
            kind(&without("timestamp")),
            ReadErrorKind::MissingTimestamps
        );

        let mut bad = objects.clone();
        bad[2]["value3"][10] = serde_json::json!("x");
        assert_eq!(
            kind(&serde_json::to_string(&bad).unwrap()),
            ReadErrorKind::NonNumeric {
                field: "value3".into(),
                index: 10
            }
        );
        let mut bad = objects.clone();
        bad[0]["value1"] = serde_json::json!("not an array");
        assert!(matches!(
            kind(&serde_json::to_string(&bad).unwrap()),
            ReadErrorKind::NotAnArray { .. }
        ));
        let mut bad = objects.clone();
        bad[8]["timestamp"][50] = bad[8]["timestamp"][49].clone();
        assert!(matches!(
            kind(&serde_json::to_string(&bad).unwrap()),
            ReadErrorKind::TimestampsNotIncreasing { index: 50, .. }
        ));
        let mut bad = objects.clone();
        bad[8]["timestamp"][7] = serde_json::json!(9_300_000_000_000_000_000u64);
        let e = kind(&serde_json::to_string(&bad).unwrap());
        assert!(
            matches!(e, ReadErrorKind::TimestampOutOfRange { index: 7, .. }),
            "{e}"
        );
        let mut bad = objects.clone();
        bad[8]["timestamp"][3] = serde_json::json!(-5);
        assert!(matches!(
            kind(&serde_json::to_string(&bad).unwrap()),
            ReadErrorKind::TimestampOutOfRange { index: 3, .. }
        ));
        let mut bad = objects.clone();
        bad.push(serde_json::json!({"value2": [1, 2, 3]}));
        assert_eq!(
            kind(&serde_json::to_string(&bad).unwrap()),
            ReadErrorKind::DuplicateChannel(2)
        );

        assert_eq!(
            kind(&sample_json(63)),
            ReadErrorKind::TooFewSamples {
                found: 63,
                min: MIN_SAMPLES
            }
        );
        assert!(parse_tap(NAME, sample_json(64).as_bytes()).is_ok());
    }

    #[test]
    fn name_errors() {
        let bad_name = |n: &str| TapName::parse(n).unwrap_err();
        assert!(matches!(bad_name("ketuk.txt"), ReadErrorKind::BadName(_)));
        assert!(matches!(
            bad_name("a_b_c_d_e.json"),
            ReadErrorKind::BadName(_)
        ));
        assert!(matches!(
            bad_name("dev_up_12x_1.json"),
            ReadErrorKind::BadName(_)
        ));
        assert!(matches!(
            bad_name("dev_up_123_one.json"),
            ReadErrorKind::BadName(_)
        ));
        assert!(matches!(
            bad_name("../etc_up_123_1.json"),
            ReadErrorKind::BadName(_)
        ));
        assert!(matches!(
            bad_name(".hidden_up_123_1.json"),
            ReadErrorKind::BadName(_)
        ));
        assert!(matches!(
            bad_name("dev/x_up_123_1.json"),
            ReadErrorKind::BadName(_)
        ));
        for unsafe_id in [
            "a..b_up_123_1.json",
            "a._up_123_1.json",
            "dev_..._123_1.json",
        ] {
            assert!(
                matches!(bad_name(unsafe_id), ReadErrorKind::BadName(_)),
                "{unsafe_id}"
            );
        }
        assert!(TapName::parse("a.b-c_u.1_123_1.json").is_ok());
        assert_eq!(
            bad_name("dev_up_123_9.json"),
            ReadErrorKind::TapOutOfRange(9)
        );
        assert_eq!(
            bad_name("dev_up_123_0.json"),
            ReadErrorKind::TapOutOfRange(0)
        );
        assert_eq!(
            bad_name("1755752474_12.json"),
            ReadErrorKind::TapOutOfRange(12)
        );
        let legacy = TapName::parse("1755752474_8.json").unwrap();
        assert_eq!(legacy.device, None);
        assert_eq!((legacy.unix_s, legacy.tap), (1_755_752_474, 8));
        // The name is checked before the content.
        assert!(matches!(
            parse_tap("x.json", b"[]"),
            Err(ReadErrorKind::BadName(_))
        ));
    }

    #[test]
    fn files_over_the_limit_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NAME);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = read_tap_file(&path).unwrap_err();
        assert_eq!(
            e.kind,
            ReadErrorKind::TooLarge {
                size: MAX_FILE_BYTES + 1,
                limit: MAX_FILE_BYTES
            }
        );
        assert!(e.to_string().contains(NAME), "{e}");
        let missing = read_tap_file(&dir.path().join("dev_up_1_1.json")).unwrap_err();
        assert!(matches!(missing.kind, ReadErrorKind::Io(_)));
    }

    #[test]
    fn ketuk_names_take_folder_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("set a");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("ketuk4.json");
        std::fs::write(&path, sample_json(70)).unwrap();
        let name = TapName::from_path(&path).unwrap();
        assert_eq!(name.device.as_deref(), Some("set-a"));
        assert_eq!(name.tap, 4);
        assert!(name.unix_s > 1_700_000_000);
        assert_eq!(
            TapName::from_path(&sub.join("ketuk9.json")).unwrap_err(),
            ReadErrorKind::TapOutOfRange(9)
        );
        assert!(read_tap_file(&path).is_ok());
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut rng = Rng::new(3);
        let alphabet = b"[]{}\",:0123456789-.eE valuetimsgd\n";
        for round in 0..3000 {
            let len = (rng.unit() * 400.0) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if round % 2 == 0 {
                        rng.next_u64() as u8
                    } else {
                        alphabet[(rng.unit() * alphabet.len() as f64) as usize]
                    }
                })
                .collect();
            assert!(parse_tap(NAME, &bytes).is_err());
        }
    }

    #[test]
    fn never_panics_on_any_truncation_of_a_real_shaped_file() {
        let full = sample_json(64);
        let bytes = full.as_bytes();
        assert!(parse_tap(NAME, bytes).is_ok());
        for cut in 0..bytes.len() {
            // Every proper prefix is truncated JSON; it must be an error, never a panic.
            assert!(
                parse_tap(NAME, &bytes[..cut]).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
    }

    /// The general path alone, for holding the scanner against it.
    fn general(bytes: &[u8]) -> Result<TapRecording, ReadErrorKind> {
        check_not_empty(bytes)?;
        parse_general(bytes)?.finish(NAME, TapName::parse(NAME).unwrap())
    }

    #[test]
    fn the_scanner_reads_the_device_layout_itself() {
        let (files, _) =
            crate::simulate::simulate_many(&crate::simulate::SimParams::default(), 1, 5, false);
        let doc: serde_json::Value = serde_json::from_str(&sample_json(120)).unwrap();
        let mut shuffled = doc.as_array().unwrap().clone();
        shuffled.swap(0, 8);
        shuffled.push(serde_json::json!({"n": -3, "ok": true, "x": null, "s": "v"}));
        let texts = [
            files[0].json.clone(),
            sample_json(500),
            serde_json::to_string_pretty(&doc).unwrap(),
            serde_json::to_string(&shuffled).unwrap(),
            format!("\r\n\t {} \n", sample_json(64)),
        ];
        for text in &texts {
            let bytes = text.as_bytes();
            assert!(scan::scan(bytes).is_some(), "fell back on {:.80}", text);
            assert_eq!(parse_tap(NAME, bytes), general(bytes));
            assert!(parse_tap(NAME, bytes).is_ok());
        }
    }

    /// A tap file as editable parts: objects of (raw key, value), arrays as raw elements.
    enum Part {
        Array(Vec<String>),
        Raw(String),
    }

    fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
        items[below(rng, items.len())]
    }

    fn below(rng: &mut Rng, n: usize) -> usize {
        ((rng.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }

    fn random_file(rng: &mut Rng) -> Vec<Vec<(String, Part)>> {
        let n = [64, 65, 80, 130][below(rng, 4)];
        let mut objects: Vec<Vec<(String, Part)>> = (1..=N_SENSORS)
            .map(|k| {
                let samples = (0..n)
                    .map(|_| (1050 + below(rng, 3030)).to_string())
                    .collect();
                vec![
                    (format!("\"value{k}\""), Part::Array(samples)),
                    (
                        "\"guid\"".to_string(),
                        Part::Raw(format!("\"{}\"", rng.uuid())),
                    ),
                ]
            })
            .collect();
        let mut t = 346_229_149_i64 + below(rng, 1 << 20) as i64;
        let ts = (0..n)
            .map(|_| {
                t += 26_900 + below(rng, 900) as i64;
                t.to_string()
            })
            .collect();
        objects.push(vec![("\"timestamp\"".to_string(), Part::Array(ts))]);
        objects.push(vec![(
            "\"guidteensy\"".to_string(),
            Part::Raw(format!("\"{}\"", rng.uuid())),
        )]);
        objects
    }

    fn mutate_structure(rng: &mut Rng, objects: &mut Vec<Vec<(String, Part)>>) {
        const ODD_NUMBERS: &[&str] = &[
            "2013.0",
            "2.5e3",
            "1E2",
            "-0",
            "0",
            "007",
            "-12",
            "-4096",
            "1.0e-5",
            "1e400",
            "123456789012345678",
            "1234567890123456789",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "99999999999999999999999",
            "\"5\"",
            "null",
            "[1]",
            "true",
            "{}",
            "- 1",
            "+1",
            "0x10",
            ".5",
            "1.",
        ];
        const ODD_KEYS: &[&str] = &[
            "\"value01\"",
            "\"value+3\"",
            "\"value9\"",
            "\"value0\"",
            "\"value\"",
            "\"val\\u0075e2\"",
            "\"timestamp\"",
            "\"guid\"",
            "\"guidteensy\"",
            "\"Value1\"",
            "\"value1 \"",
            "\"firmware\"",
            "\"\"",
            "\"t\\u00e9\"",
        ];
        const ODD_VALUES: &[&str] = &[
            "\"a\\nb\"",
            "5",
            "null",
            "\"\"",
            "\"\u{fc}\"",
            "[\"x\"]",
            "1.5",
            "true",
            "false",
            "{\"a\":[1,{}]}",
            "[]",
            "[1,2,3]",
            "\"x\\\"y\"",
            "-7",
            "{}",
            "\"\x01\"",
        ];
        if objects.is_empty() {
            return;
        }
        let o = below(rng, objects.len());
        let p = below(rng, objects.len());
        match below(rng, 12) {
            0 => objects.swap(o, p),
            1 => {
                objects.remove(o);
            }
            2 => {
                let copy = objects[o]
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Part::Array(a) => Part::Array(a.clone()),
                            Part::Raw(r) => Part::Raw(r.clone()),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                objects.insert(p, copy);
            }
            3 => {
                let key = pick(rng, &["\"firmware\"", "\"n\"", "\"rate\""]).to_string();
                let value = Part::Raw(pick(rng, ODD_VALUES).to_string());
                let at = below(rng, objects[o].len() + 1);
                objects[o].insert(at, (key, value));
            }
            4 => objects[o].reverse(),
            5 | 6 | 10 => {
                let arrays: Vec<(usize, usize)> = objects
                    .iter()
                    .enumerate()
                    .flat_map(|(i, obj)| {
                        obj.iter()
                            .enumerate()
                            .filter(|(_, (_, v))| matches!(v, Part::Array(a) if a.len() > 1))
                            .map(move |(j, _)| (i, j))
                    })
                    .collect();
                if arrays.is_empty() {
                    return;
                }
                let (i, j) = arrays[below(rng, arrays.len())];
                let Part::Array(a) = &mut objects[i][j].1 else {
                    unreachable!()
                };
                let at = below(rng, a.len());
                match below(rng, 3) {
                    0 => a[at] = pick(rng, ODD_NUMBERS).to_string(),
                    1 => a.truncate(at),
                    _ => {
                        let other = below(rng, a.len());
                        a.swap(at, other);
                    }
                }
            }
            7 => {
                if !objects[o].is_empty() {
                    let j = below(rng, objects[o].len());
                    objects[o][j].0 = pick(rng, ODD_KEYS).to_string();
                }
            }
            8 => {
                if !objects[o].is_empty() {
                    let j = below(rng, objects[o].len());
                    objects[o][j].1 = Part::Raw(pick(rng, ODD_VALUES).to_string());
                }
            }
            _ => {
                if o != p {
                    let moved = std::mem::take(&mut objects[p]);
                    objects[o].extend(moved);
                    objects.remove(p);
                }
            }
        }
    }

    fn render(rng: &mut Rng, objects: &[Vec<(String, Part)>], ws_rate: f64) -> Vec<u8> {
        let mut out = String::new();
        let ws = |out: &mut String, rng: &mut Rng| {
            if rng.unit() < ws_rate {
                out.push_str(pick(rng, &[" ", "\n", "\t", "\r\n", "  ", "\x0c"]));
            }
        };
        out.push('[');
        for (i, object) in objects.iter().enumerate() {
            ws(&mut out, rng);
            if i > 0 {
                out.push(',');
                ws(&mut out, rng);
            }
            out.push('{');
            for (j, (key, value)) in object.iter().enumerate() {
                ws(&mut out, rng);
                if j > 0 {
                    out.push(',');
                    ws(&mut out, rng);
                }
                out.push_str(key);
                ws(&mut out, rng);
                out.push(':');
                ws(&mut out, rng);
                match value {
                    Part::Raw(r) => out.push_str(r),
                    Part::Array(a) => {
                        out.push('[');
                        for (e, x) in a.iter().enumerate() {
                            if e > 0 {
                                ws(&mut out, rng);
                                out.push(',');
                            }
                            ws(&mut out, rng);
                            out.push_str(x);
                        }
                        ws(&mut out, rng);
                        out.push(']');
                    }
                }
            }
            ws(&mut out, rng);
            out.push('}');
        }
        ws(&mut out, rng);
        out.push(']');
        ws(&mut out, rng);
        out.into_bytes()
    }

    fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
        const ALPHABET: &[u8] = b"[]{}\",:0123456789-+.eE \n\t\r\x0cvalue\\u\x00\x01\xc3\xff";
        if bytes.is_empty() {
            return;
        }
        let at = below(rng, bytes.len());
        match below(rng, 4) {
            0 => bytes[at] = ALPHABET[below(rng, ALPHABET.len())],
            1 => bytes.truncate(at),
            2 => bytes.insert(at, b" \n\t\r"[below(rng, 4)]),
            _ => {
                bytes.remove(at);
            }
        }
    }

    #[test]
    fn scanner_and_general_path_agree_on_mutated_files() {
        let mut rng = Rng::new(6);
        let cases = 4000;
        let (mut scanned, mut ok, mut scanned_err) = (0, 0, 0);
        for case in 0..cases {
            let mut objects = random_file(&mut rng);
            for _ in 0..below(&mut rng, 3) {
                mutate_structure(&mut rng, &mut objects);
            }
            let ws_rate = [0.0, 0.0, 0.05, 0.5][below(&mut rng, 4)];
            let mut bytes = render(&mut rng, &objects, ws_rate);
            if rng.unit() < 0.3 {
                for _ in 0..1 + below(&mut rng, 3) {
                    mutate_bytes(&mut rng, &mut bytes);
                }
            }
            let fast = parse_tap(NAME, &bytes);
            let reference = general(&bytes);
            assert_eq!(
                fast,
                reference,
                "case {case}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            );
            let by_scanner = scan::scan(&bytes).is_some();
            scanned += usize::from(by_scanner);
            ok += usize::from(fast.is_ok());
            scanned_err += usize::from(by_scanner && fast.is_err());
        }
        // The cases must exercise both the scanner's own answers and the fallback.
        assert!(scanned > cases / 6, "scanner answered {scanned} of {cases}");
        assert!(
            scanned < cases * 3 / 4,
            "scanner answered {scanned} of {cases}"
        );
        assert!(
            ok > cases / 5 && ok < cases * 4 / 5,
            "{ok} of {cases} parsed"
        );
        assert!(
            scanned_err > cases / 50,
            "{scanned_err} scanned files failed later checks"
        );
    }
}
