//! Survey files: each tree's own size, `<device>_<unix-seconds>_survey.json`.
//!
//! A JSON object with either `"circumference_cm"` (what a tape measures) or `"diameter_m"`,
//! and optionally `"species"`, `"height_m"` (the sensor ring above ground) and `"note"`;
//! other keys are kept and ignored. A survey belongs to the set of its device whose window
//! (the set's first file time .. + `window_s`) contains its unix seconds, the nearest such set
//! if several ([`attach`]); that set is computed with the survey's diameter.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::device::safe_id;

/// Diameters a survey may give, metres.
pub const DIAMETER_RANGE_M: std::ops::RangeInclusive<f64> = 0.05..=3.0;

/// The parsed name of a survey file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurveyName {
    pub device: String,
    pub unix_s: i64,
}

impl SurveyName {
    /// Parses a bare file name; `None` if it is not a survey file's name.
    pub fn parse(file_name: &str) -> Option<SurveyName> {
        let stem = file_name.strip_suffix("_survey.json")?;
        let (device, unix) = stem.split_once('_')?;
        if !safe_id(device) || unix.is_empty() || !unix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SurveyName {
            device: device.to_string(),
            unix_s: unix.parse().ok()?,
        })
    }

    /// `None` if the path's file name is not a survey file's name.
    pub fn from_path(path: &Path) -> Option<SurveyName> {
        SurveyName::parse(path.file_name()?.to_str()?)
    }
}

/// A survey file's content.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Survey {
    /// The file's name, for the report and the logs.
    #[serde(skip)]
    pub file_name: String,
    /// From `diameter_m`, or `circumference_cm` / π / 100.
    #[serde(skip)]
    pub diameter_m: f64,
    #[serde(skip)]
    pub species: Option<String>,
    #[serde(skip)]
    pub circumference_cm: Option<f64>,
    #[serde(skip)]
    pub height_m: Option<f64>,
    /// Every field of the file as it was (copied into the report).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Survey {
    /// The circumference in cm: the file's, or π × the diameter.
    pub fn circumference_cm(&self) -> f64 {
        self.circumference_cm
            .unwrap_or(self.diameter_m * 100.0 * std::f64::consts::PI)
    }
}

/// Why a survey file cannot be used; it names the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct SurveyError {
    pub file: String,
    pub problem: SurveyProblem,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SurveyProblem {
    #[error("cannot read: {0}")]
    Io(String),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("{0} must be a positive number")]
    BadNumber(&'static str),
    #[error("species must be a string")]
    BadSpecies,
    #[error("has neither circumference_cm nor diameter_m")]
    NoSize,
    #[error("gives both circumference_cm and diameter_m")]
    BothSizes,
    #[error("diameter {0} m is outside 0.05–3 m")]
    DiameterOutOfRange(f64),
}

/// Parses a survey file's bytes; `file_name` is for the error.
pub fn parse_survey(file_name: &str, bytes: &[u8]) -> Result<Survey, SurveyError> {
    parse_inner(file_name, bytes).map_err(|problem| SurveyError {
        file: file_name.to_string(),
        problem,
    })
}

fn parse_inner(file_name: &str, bytes: &[u8]) -> Result<Survey, SurveyProblem> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| SurveyProblem::NotJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(SurveyProblem::NotObject);
    };
    let number = |key: &'static str| -> Result<Option<f64>, SurveyProblem> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(Some)
                .ok_or(SurveyProblem::BadNumber(key)),
        }
    };
    let circumference_cm = number("circumference_cm")?;
    let given_diameter = number("diameter_m")?;
    let height_m = number("height_m")?;
    let species = match fields.get("species") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(SurveyProblem::BadSpecies),
    };
    let diameter_m = match (circumference_cm, given_diameter) {
        (Some(_), Some(_)) => return Err(SurveyProblem::BothSizes),
        (Some(c), None) => c / 100.0 / std::f64::consts::PI,
        (None, Some(d)) => d,
        (None, None) => return Err(SurveyProblem::NoSize),
    };
    if !DIAMETER_RANGE_M.contains(&diameter_m) {
        return Err(SurveyProblem::DiameterOutOfRange(diameter_m));
    }
    Ok(Survey {
        file_name: file_name.to_string(),
        diameter_m,
        species,
        circumference_cm,
        height_m,
        fields,
    })
}

/// Reads and parses a survey file.
pub fn read_survey(path: &Path) -> Result<Survey, SurveyError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let bytes = std::fs::read(path).map_err(|e| SurveyError {
        file: file_name.clone(),
        problem: SurveyProblem::Io(e.to_string()),
    })?;
    parse_survey(&file_name, &bytes)
}

/// For each set, the index of the survey it takes: the newest of those [`attach`] gives it.
pub fn newest_per_set(
    sets: &[(Option<&str>, i64)],
    surveys: &[SurveyName],
    window_s: i64,
) -> Vec<Option<usize>> {
    let mut chosen: Vec<Option<usize>> = vec![None; sets.len()];
    for (k, to) in attach(sets, surveys, window_s).into_iter().enumerate() {
        if let Some(i) = to
            && chosen[i].is_none_or(|c| surveys[k].unix_s > surveys[c].unix_s)
        {
            chosen[i] = Some(k);
        }
    }
    chosen
}

/// For each survey, the index of the set it belongs to: the same device, a window
/// (`set_s ..= set_s + window_s`) that contains the survey's seconds, the nearest set in time
/// if several. `sets` are `(device, first file's unix seconds)`. Pure.
pub fn attach(
    sets: &[(Option<&str>, i64)],
    surveys: &[SurveyName],
    window_s: i64,
) -> Vec<Option<usize>> {
    surveys
        .iter()
        .map(|s| {
            sets.iter()
                .enumerate()
                .filter(|(_, (device, t0))| {
                    *device == Some(s.device.as_str())
                        && (*t0..=t0.saturating_add(window_s)).contains(&s.unix_s)
                })
                .min_by_key(|(i, (_, t0))| ((s.unix_s - t0).abs(), *i))
                .map(|(i, _)| i)
        })
        .collect()
}

/// The survey for set `set` among `surveys` (with their names), given every set known
/// (`sets`, `set` an index into it): the newest survey attached to it, if any.
pub fn survey_for_set<'a, T>(
    sets: &[(Option<&str>, i64)],
    set: usize,
    surveys: &'a [(SurveyName, T)],
    window_s: i64,
) -> Option<&'a (SurveyName, T)> {
    let names: Vec<SurveyName> = surveys.iter().map(|(n, _)| n.clone()).collect();
    attach(sets, &names, window_s)
        .into_iter()
        .zip(surveys)
        .filter(|(to, _)| *to == Some(set))
        .map(|(_, s)| s)
        .max_by_key(|(n, _)| n.unix_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn survey_names_are_recognised() {
        assert_eq!(
            SurveyName::parse("20-79-18-81-6E-65_1755752474_survey.json"),
            Some(SurveyName {
                device: "20-79-18-81-6E-65".into(),
                unix_s: 1755752474
            })
        );
        for bad in [
            "dev_12_1.json",
            "_12_survey.json",
            "dev_x1_survey.json",
            "dev_12_survey.txt",
            "../dev_12_survey.json",
            "dev_up_12_survey.json",
        ] {
            assert_eq!(SurveyName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn survey_circumference_gives_the_diameter_and_fields_are_kept() {
        let s = parse_survey(
            "d_1_survey.json",
            br#"{"circumference_cm": 157.07963267948966, "species": "Mahoni", "height_m": 1.3, "note": "n", "extra": [1]}"#,
        )
        .unwrap();
        assert!((s.diameter_m - 0.5).abs() < 1e-12);
        assert_eq!(s.species.as_deref(), Some("Mahoni"));
        assert_eq!(s.height_m, Some(1.3));
        assert_eq!(s.fields["extra"], serde_json::json!([1]));
        assert!((s.circumference_cm() - 157.07963267948966).abs() < 1e-9);
        let d = parse_survey("d_1_survey.json", br#"{"diameter_m": 0.4}"#).unwrap();
        assert_eq!(d.diameter_m, 0.4);
        assert!((d.circumference_cm() - 40.0 * std::f64::consts::PI).abs() < 1e-9);
    }

    #[test]
    fn survey_errors_name_the_file_and_the_problem() {
        let cases: [(&[u8], SurveyProblem); 7] = [
            (b"[1]", SurveyProblem::NotObject),
            (b"{}", SurveyProblem::NoSize),
            (
                br#"{"diameter_m": 0.3, "circumference_cm": 94}"#,
                SurveyProblem::BothSizes,
            ),
            (
                br#"{"diameter_m": "x"}"#,
                SurveyProblem::BadNumber("diameter_m"),
            ),
            (
                br#"{"diameter_m": 0.3, "species": 3}"#,
                SurveyProblem::BadSpecies,
            ),
            (
                br#"{"diameter_m": 4}"#,
                SurveyProblem::DiameterOutOfRange(4.0),
            ),
            (
                br#"{"circumference_cm": 10}"#,
                SurveyProblem::DiameterOutOfRange(10.0 / 100.0 / std::f64::consts::PI),
            ),
        ];
        for (bytes, problem) in cases {
            let e = parse_survey("t_5_survey.json", bytes).unwrap_err();
            assert_eq!(e.problem, problem);
            assert!(e.to_string().starts_with("t_5_survey.json: "), "{e}");
        }
        let e = parse_survey("t_5_survey.json", b"{").unwrap_err();
        assert!(matches!(e.problem, SurveyProblem::NotJson(_)));
    }

    #[test]
    fn each_set_takes_the_newest_survey_attached_to_it() {
        let sets = [(Some("A"), 1000), (Some("B"), 1000), (Some("C"), 1000)];
        let n = |d: &str, t| SurveyName {
            device: d.into(),
            unix_s: t,
        };
        let surveys = [n("A", 1010), n("A", 1200), n("A", 1100), n("B", 1050)];
        assert_eq!(
            newest_per_set(&sets, &surveys, 900),
            vec![Some(1), Some(3), None]
        );
    }

    #[test]
    fn survey_attaches_to_the_nearest_set_of_its_device_whose_window_holds_it() {
        let sets = [
            (Some("A"), 1000),
            (Some("A"), 1500),
            (Some("B"), 1000),
            (None, 1000),
        ];
        let n = |d: &str, t| SurveyName {
            device: d.into(),
            unix_s: t,
        };
        let got = attach(
            &sets,
            &[
                n("A", 1000),
                n("A", 1600),
                n("A", 1400),
                n("A", 999),
                n("A", 2500),
                n("B", 1900),
                n("C", 1000),
            ],
            900,
        );
        // 1600 is in both A windows (1000..=1900, 1500..=2400): the nearest is 1500.
        assert_eq!(got, [Some(0), Some(1), Some(0), None, None, Some(2), None]);
        let surveys = vec![
            (n("A", 1100), PathBuf::from("a1")),
            (n("A", 1200), PathBuf::from("a2")),
        ];
        assert_eq!(
            survey_for_set(&sets, 0, &surveys, 900).map(|s| &s.1),
            Some(&PathBuf::from("a2"))
        );
        assert_eq!(survey_for_set(&sets, 1, &surveys, 900), None);
    }
}
