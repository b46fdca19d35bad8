//! `chimaera_repo.yaml`: a repository's namespace and the modules it holds.
//!
//! ```yaml
//! name: chimaera
//! namespace: chimaera
//! version: 0.1.0
//! modules:
//!   - MOD_NAME
//!   - bdev
//! ```
//!
//! `namespace` is required (every module of the repository lives in it). `modules` is
//! read when present; [`crate::repository`] requires it. Other keys are free.
use crate::module::{malformed, read, required, Field};
use crate::place::{ManifestPath, Place};
use crate::problem::{Problem, ProblemKind};
use crate::yaml::{self, Node};

/// A parsed `chimaera_repo.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoManifest {
    /// The file.
    pub path: ManifestPath,
    /// `namespace`.
    pub namespace: Field,
    /// The `modules:` list as written (each item's text and place); `None` without one.
    pub modules: Option<Vec<Field>>,
    /// Where `modules:` is written (the file when it is not).
    pub modules_place: Place,
}

/// Reads and parses the repository manifest at `path`.
pub fn read_repo(path: &ManifestPath) -> Result<RepoManifest, Vec<Problem>> {
    let text = read(path).map_err(|problem| vec![problem])?;
    parse_repo(&text, path.clone())
}

/// Parses the text of a repository manifest read from `path`.
pub fn parse_repo(text: &str, path: ManifestPath) -> Result<RepoManifest, Vec<Problem>> {
    let mapping = yaml::parse_mapping(text, &path).map_err(|error| vec![malformed(error)])?;
    let namespace = required(&mapping, "namespace", &path).map_err(|problem| vec![problem])?;
    let listed = mapping.iter().find(|(key, _)| key.text == "modules");
    let modules = match listed {
        None => None,
        Some((_, Node::Sequence(items, _))) => Some(
            items
                .iter()
                .map(|item| Field {
                    value: match item {
                        Node::Scalar(scalar) => scalar.text.clone(),
                        Node::Sequence(..) | Node::Mapping(..) => "…".to_owned(),
                    },
                    place: item.place().clone(),
                })
                .collect(),
        ),
        Some((key, _)) => {
            return Err(vec![Problem::new(
                key.place.clone(),
                ProblemKind::NoModuleList,
            )])
        }
    };
    let modules_place = listed.map_or_else(|| path.whole(), |(key, _)| key.place.clone());
    Ok(RepoManifest {
        path,
        namespace,
        modules,
        modules_place,
    })
}
