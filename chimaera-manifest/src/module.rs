//! `chimaera_mod.yaml`: a module's name, namespace, version and method ids.
//!
//! ```yaml
//! module_name: MOD_NAME
//! namespace: chimaera
//! version: 1.0.0
//! kCreate: 0        # inherited methods: fixed ids 0-9, -1 = not implemented
//! kCustom: 10       # custom methods: 10 and up
//! ```
//!
//! [`parse_module`] reads the shape (every problem, not just the first); a manifest that
//! parses can still break the rules, which [`ModuleManifest::check`] reports.
use crate::place::{ManifestPath, Place};
use crate::problem::{Problem, ProblemKind};
use crate::yaml::{self, Node, Scalar};

/// A parsed `chimaera_mod.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleManifest {
    /// The file.
    pub path: ManifestPath,
    /// `module_name`.
    pub module_name: Field,
    /// `namespace`.
    pub namespace: Field,
    /// `version`.
    pub version: Field,
    /// Method entries in file order.
    pub entries: Vec<Entry>,
}

/// A plain value and where it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The value as text.
    pub value: String,
    /// Where the value is.
    pub place: Place,
}

/// One `kName: id` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name, e.g. `kCustom`.
    pub name: String,
    /// `None` for `-1` (not implemented).
    pub id: Option<u32>,
    /// Where the id is written.
    pub place: Place,
}

impl ModuleManifest {
    /// The entry named `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    /// The enabled entries (not `-1`) as (name, id).
    pub fn enabled(&self) -> impl Iterator<Item = (&str, u32)> {
        self.entries
            .iter()
            .filter_map(|entry| Some((entry.name.as_str(), entry.id?)))
    }

    /// Every rule this manifest breaks; see [`crate::rules`].
    pub fn check(&self) -> Vec<Problem> {
        crate::rules::check_module(self)
    }
}

/// Reads and parses the module manifest at `path`.
pub fn read_module(path: &ManifestPath) -> Result<ModuleManifest, Vec<Problem>> {
    let text = read(path).map_err(|problem| vec![problem])?;
    parse_module(&text, path.clone())
}

pub(crate) fn read(path: &ManifestPath) -> Result<String, Problem> {
    std::fs::read_to_string(&path.path).map_err(|error| {
        Problem::new(
            path.whole(),
            ProblemKind::Unreadable {
                error: error.to_string(),
            },
        )
    })
}

pub(crate) fn malformed(error: yaml::SyntaxError) -> Problem {
    Problem::new(
        error.place,
        ProblemKind::Malformed {
            message: error.message,
        },
    )
}

/// Parses the text of a module manifest read from `path`.
pub fn parse_module(text: &str, path: ManifestPath) -> Result<ModuleManifest, Vec<Problem>> {
    let mapping = yaml::parse_mapping(text, &path).map_err(|error| vec![malformed(error)])?;
    let mut problems = Vec::new();
    let mut field = |key: &'static str| match required(&mapping, key, &path) {
        Ok(field) => field,
        Err(problem) => {
            problems.push(problem);
            Field {
                value: String::new(),
                place: path.whole(),
            }
        }
    };
    let module_name = field("module_name");
    let namespace = field("namespace");
    let version = field("version");
    let mut entries = Vec::new();
    for (key, value) in &mapping {
        if matches!(key.text.as_str(), "module_name" | "namespace" | "version") {
            continue;
        }
        if !is_entry_name(&key.text) {
            problems.push(Problem::new(
                key.place.clone(),
                ProblemKind::UnexpectedKey {
                    key: key.text.clone(),
                },
            ));
            continue;
        }
        match method_id(value) {
            Ok(id) => entries.push(Entry {
                name: key.text.clone(),
                id,
                place: value.place().clone(),
            }),
            // An empty value has no token of its own: point at its key.
            Err(written) => problems.push(Problem::new(
                match value {
                    Node::Scalar(scalar) if scalar.text.is_empty() => key.place.clone(),
                    other => other.place().clone(),
                },
                ProblemKind::BadId {
                    entry: key.text.clone(),
                    value: written,
                },
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ModuleManifest {
        path,
        module_name,
        namespace,
        version,
        entries,
    })
}

/// The plain value of `key`, which must be present.
pub(crate) fn required(
    mapping: &[(Scalar, Node)],
    key: &'static str,
    path: &ManifestPath,
) -> Result<Field, Problem> {
    match mapping.iter().find(|(name, _)| name.text == key) {
        Some((_, Node::Scalar(value))) if !value.text.is_empty() => Ok(Field {
            value: value.text.clone(),
            place: value.place.clone(),
        }),
        Some((name, _)) => Err(Problem::new(
            name.place.clone(),
            ProblemKind::NotPlain { key },
        )),
        None => Err(Problem::new(path.whole(), ProblemKind::MissingKey { key })),
    }
}

/// `Some(id)`, `None` for `-1`, or the value as written when it is neither.
fn method_id(value: &Node) -> Result<Option<u32>, String> {
    let Node::Scalar(scalar) = value else {
        return Err("a list or mapping".to_owned());
    };
    match scalar.text.parse::<i64>() {
        Ok(-1) if scalar.plain => Ok(None),
        Ok(id) if scalar.plain => u32::try_from(id).map(Some).map_err(|_| scalar.text.clone()),
        _ if scalar.plain && scalar.text.is_empty() => Err("empty".to_owned()),
        _ if scalar.plain => Err(scalar.text.clone()),
        _ => Err(format!("\"{}\"", scalar.text)),
    }
}

/// `kName` with an upper-case letter after the `k`, letters and digits only.
pub fn is_entry_name(name: &str) -> bool {
    name.len() > 1
        && name.starts_with('k')
        && name[1..].starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> ManifestPath {
        ManifestPath {
            path: "/ws/m.yaml".into(),
            display: "m.yaml".to_owned(),
        }
    }

    #[test]
    fn entries_in_order_with_the_place_of_each_id() {
        let text = "module_name: foo\nnamespace: chimaera\nversion: 1.0\n\nkCreate: 0\nkDestroy: -1\nkCustom:   10\n";
        let manifest = parse_module(text, path()).unwrap();
        assert_eq!(manifest.module_name.value, "foo");
        assert_eq!(manifest.version.value, "1.0");
        assert_eq!(manifest.namespace.place.to_string(), "m.yaml:2:12");
        let entries: Vec<_> = manifest
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.id, e.place.to_string()))
            .collect();
        assert_eq!(
            entries,
            [
                ("kCreate", Some(0), "m.yaml:5:10".to_owned()),
                ("kDestroy", None, "m.yaml:6:11".to_owned()),
                ("kCustom", Some(10), "m.yaml:7:12".to_owned())
            ]
        );
    }

    #[test]
    fn every_shape_problem_is_reported_at_its_token() {
        let text = "namespace: chimaera\nversion: [1]\nkFoo: -3\nbar: 1\nkBar: \"10\"\nkNone:\n";
        let problems = parse_module(text, path()).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "m.yaml: no `module_name`; add a `module_name: …` line",
                "m.yaml:2:1: `version` must be a plain value, e.g. `version: chimaera`",
                "m.yaml:3:7: `kFoo` is `-3`; a method id is 0 or more, or -1 for not implemented",
                "m.yaml:4:1: unexpected key `bar`; expected `module_name`, `namespace`, `version` or a method entry like `kCustom: 10`",
                "m.yaml:5:7: `kBar` is `\"10\"`; a method id is 0 or more, or -1 for not implemented",
                "m.yaml:6:1: `kNone` is `empty`; a method id is 0 or more, or -1 for not implemented",
            ]
        );
    }

    #[test]
    fn malformed_yaml_names_line_and_column() {
        let problems = parse_module("module_name: foo\n  bad: [\n", path()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().starts_with("m.yaml:2:"),
            "{problems:?}"
        );
    }
}
