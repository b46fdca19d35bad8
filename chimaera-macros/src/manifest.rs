//! Finding and reading the manifests a chimod is checked against.
//!
//! * `chimaera_mod.yaml`: `module_name`, `namespace`, `version`, then one `kName: id`
//!   line per method (`-1` = not implemented). By default it sits in
//!   `$CARGO_MANIFEST_DIR`; `manifest = "p"` is relative to the directory of the source
//!   file holding the attribute, like `include_str!`.
//! * `chimaera_repo.yaml`: the nearest one in the module manifest's directory or above;
//!   its `namespace` must equal the module's. Having none is allowed (a chimod built
//!   outside any repository).
//!
//! Paths are kept twice: absolute and lexically normalized (for reading, for
//! `include_str!`, and for comparing the struct's manifest with the impl's), and as a
//! *display* string for messages. A display path is never absolute when it can be
//! avoided — relative to the compiler's working directory or the crate, else to the
//! source file — so compiler output does not depend on where the repository is cloned.
//! Reading never panics: every problem is an error message naming `path:line:col`.
use serde_yaml::{Mapping, Value};
use std::path::{Component, Path, PathBuf};

/// File name of a module manifest.
pub const MODULE_FILE: &str = "chimaera_mod.yaml";
/// File name of a repository manifest.
pub const REPO_FILE: &str = "chimaera_repo.yaml";

/// Where the macro runs: the directories paths are resolved against.
pub struct Env {
    /// `$CARGO_MANIFEST_DIR` of the crate being compiled.
    pub manifest_dir: Option<PathBuf>,
    /// The compiler's working directory (the workspace root under cargo).
    pub cwd: Option<PathBuf>,
    /// Directory of the source file holding the attribute, when the compiler knows it.
    pub source_dir: Option<PathBuf>,
}

impl Env {
    /// The environment of this compiler process; `source_file` as the compiler reports
    /// it (possibly relative to the working directory).
    pub fn from_process(source_file: Option<PathBuf>) -> Self {
        let cwd = std::env::current_dir().ok();
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
        let source_dir = source_file.and_then(|file| {
            let absolute = match &cwd {
                Some(cwd) if file.is_relative() => cwd.join(file),
                _ => file,
            };
            absolute.parent().map(normalize)
        });
        Env {
            manifest_dir,
            cwd,
            source_dir,
        }
    }
}

/// A manifest file: where it is, and how messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Absolute, lexically normalized.
    pub path: PathBuf,
    /// For messages; see the module docs.
    pub display: String,
}

/// A parsed `chimaera_mod.yaml`.
#[derive(Debug)]
pub struct ModuleManifest {
    pub location: Location,
    pub module_name: String,
    pub namespace: String,
    pub version: String,
    /// Method entries in file order.
    pub entries: Vec<Entry>,
}

/// One `kName: id` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// `None` for `-1` (not implemented).
    pub id: Option<u32>,
    /// 1-based line in the file, `0` when not found.
    pub line: usize,
}

/// A parsed `chimaera_repo.yaml` (the fields the checks use).
#[derive(Debug)]
pub struct RepoManifest {
    pub location: Location,
    pub namespace: String,
}

impl ModuleManifest {
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }
}

impl Entry {
    /// `path:line` of this entry, for messages.
    pub fn at(&self, location: &Location) -> String {
        if self.line == 0 {
            location.display.clone()
        } else {
            format!("{}:{}", location.display, self.line)
        }
    }
}

/// The module manifest a `#[chimod]` attribute refers to (`written` is its `manifest = "…"`).
pub fn locate(env: &Env, written: Option<&str>) -> Location {
    let path = match written {
        Some(written) => {
            let base = env.source_dir.as_ref().or(env.manifest_dir.as_ref());
            match base {
                Some(base) => normalize(&base.join(written)),
                None => normalize(Path::new(written)),
            }
        }
        None => {
            let base = env.manifest_dir.clone().unwrap_or_default();
            normalize(&base.join(MODULE_FILE))
        }
    };
    let display = display_path(env, &path, written);
    Location { path, display }
}

/// The nearest `chimaera_repo.yaml` in the module manifest's directory or above.
pub fn find_repo(env: &Env, module: &Location) -> Option<Location> {
    let mut dir = module.path.parent();
    while let Some(current) = dir {
        let candidate = current.join(REPO_FILE);
        if candidate.is_file() {
            let display = display_path(env, &candidate, None);
            return Some(Location {
                path: candidate,
                display,
            });
        }
        dir = current.parent();
    }
    None
}

/// Reads and parses a module manifest.
pub fn read_module(location: &Location) -> Result<ModuleManifest, Vec<String>> {
    let text = read(location)?;
    parse_module(&text, location.clone())
}

/// Reads and parses a repository manifest.
pub fn read_repo(location: &Location) -> Result<RepoManifest, Vec<String>> {
    let text = read(location)?;
    let mapping = parse_mapping(&text, location)?;
    let namespace = required_string(&mapping, "namespace", location).map_err(|e| vec![e])?;
    Ok(RepoManifest {
        location: location.clone(),
        namespace,
    })
}

fn read(location: &Location) -> Result<String, Vec<String>> {
    std::fs::read_to_string(&location.path).map_err(|error| {
        vec![format!(
            "cannot read manifest `{}`: {error}; create it or point `manifest = \"…\"` at it",
            location.display
        )]
    })
}

/// Parses the text of a module manifest; all problems are reported, not just the first.
pub fn parse_module(text: &str, location: Location) -> Result<ModuleManifest, Vec<String>> {
    let mapping = parse_mapping(text, &location)?;
    let mut errors = Vec::new();
    let mut field = |key: &str| {
        required_string(&mapping, key, &location).unwrap_or_else(|error| {
            errors.push(error);
            String::new()
        })
    };
    let module_name = field("module_name");
    let namespace = field("namespace");
    let version = field("version");
    let mut entries = Vec::new();
    for (key, value) in &mapping {
        let Some(name) = key.as_str() else {
            errors.push(format!(
                "malformed manifest `{}`: key `{}` is not a name",
                location.display,
                scalar_text(key)
            ));
            continue;
        };
        if matches!(name, "module_name" | "namespace" | "version") {
            continue;
        }
        let line = line_of(text, name);
        let at = Entry {
            name: name.to_owned(),
            id: None,
            line,
        }
        .at(&location);
        let is_entry_name = name.len() > 1
            && name.starts_with('k')
            && name[1..].starts_with(|c: char| c.is_ascii_uppercase())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        if !is_entry_name {
            errors.push(format!(
                "unexpected key `{name}` in `{at}`; expected `module_name`, `namespace`, `version` or a method entry like `kCustom: 10`"
            ));
            continue;
        }
        let id = match value.as_i64() {
            Some(-1) => None,
            Some(id) if (0..=i64::from(u32::MAX)).contains(&id) => Some(id as u32),
            _ => {
                errors.push(format!(
                    "`{name}` in `{at}` is `{}`; a method id is 0 or more, or -1 for not implemented",
                    scalar_text(value)
                ));
                continue;
            }
        };
        entries.push(Entry {
            name: name.to_owned(),
            id,
            line,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ModuleManifest {
        location,
        module_name,
        namespace,
        version,
        entries,
    })
}

fn parse_mapping(text: &str, location: &Location) -> Result<Mapping, Vec<String>> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(mapping)) => Ok(mapping),
        Ok(_) => Err(vec![format!(
            "malformed manifest `{}`: expected `key: value` lines",
            location.display
        )]),
        Err(error) => {
            let message = error.to_string();
            let (at, message) = match error.location() {
                Some(place) => {
                    let suffix = format!(" at line {} column {}", place.line(), place.column());
                    (
                        format!("{}:{}:{}", location.display, place.line(), place.column()),
                        message.replacen(&suffix, "", 1),
                    )
                }
                None => (location.display.clone(), message),
            };
            Err(vec![format!("malformed manifest `{at}`: {message}")])
        }
    }
}

fn required_string(mapping: &Mapping, key: &str, location: &Location) -> Result<String, String> {
    match mapping.get(key) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => Ok(scalar_text(value)),
        Some(_) => Err(format!(
            "`{key}` in manifest `{}` must be a plain value, e.g. `{key}: chimaera`",
            location.display
        )),
        None => Err(format!(
            "manifest `{}` has no `{key}`; add a `{key}: …` line",
            location.display
        )),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_owned(),
        _ => "…".to_owned(),
    }
}

/// The 1-based line where `key:` starts a line, `0` if none does.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let rest = line.trim_start();
            let rest = rest
                .strip_prefix(key)
                .or_else(|| rest.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| rest.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map_or(0, |index| index + 1)
}

/// How messages name `path`: relative to the working directory or the crate if under
/// either, else relative to the source file, else as written.
fn display_path(env: &Env, path: &Path, written: Option<&str>) -> String {
    let under = |base: &Option<PathBuf>| {
        base.as_ref()
            .and_then(|base| path.strip_prefix(base).ok())
            .filter(|rel| !rel.as_os_str().is_empty())
            .map(|rel| rel.display().to_string())
    };
    under(&env.cwd)
        .or_else(|| under(&env.manifest_dir))
        .or_else(|| {
            env.source_dir
                .as_ref()
                .map(|dir| relative_between(dir, path).display().to_string())
        })
        .or_else(|| written.map(str::to_owned))
        .unwrap_or_else(|| path.display().to_string())
}

/// `path` as seen from directory `from` (both absolute and normalized), using `..`.
fn relative_between(from: &Path, path: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = path.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..from.len() {
        relative.push("..");
    }
    for component in &to[common..] {
        relative.push(component.as_os_str());
    }
    relative
}

/// Resolves `.` and `..` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            manifest_dir: Some(PathBuf::from("/ws/chimods/foo")),
            cwd: Some(PathBuf::from("/ws")),
            source_dir: Some(PathBuf::from("/ws/chimods/foo/src")),
        }
    }

    fn location() -> Location {
        Location {
            path: PathBuf::from("/ws/m.yaml"),
            display: "m.yaml".to_owned(),
        }
    }

    #[test]
    fn default_manifest_is_in_the_crate_and_shown_from_the_workspace() {
        let location = locate(&env(), None);
        assert_eq!(
            location.path,
            Path::new("/ws/chimods/foo/chimaera_mod.yaml")
        );
        assert_eq!(location.display, "chimods/foo/chimaera_mod.yaml");
    }

    #[test]
    fn written_manifest_is_relative_to_the_source_file() {
        let location = locate(&env(), Some("../other.yaml"));
        assert_eq!(location.path, Path::new("/ws/chimods/foo/other.yaml"));
        assert_eq!(location.display, "chimods/foo/other.yaml");
    }

    #[test]
    fn paths_outside_the_build_are_shown_relative_to_the_source() {
        let env = Env {
            manifest_dir: Some(PathBuf::from("/build/trybuild/pkg")),
            cwd: Some(PathBuf::from("/build/trybuild")),
            source_dir: Some(PathBuf::from("/repo/tests/ui/ids")),
        };
        assert_eq!(locate(&env, Some("x.yaml")).display, "x.yaml");
        assert_eq!(
            display_path(&env, Path::new("/repo/chimaera_repo.yaml"), None),
            "../../../chimaera_repo.yaml"
        );
    }

    #[test]
    fn module_manifest_parses_entries_in_order_with_lines() {
        let text = "module_name: foo\nnamespace: chimaera\nversion: 1.0\n\nkCreate: 0\nkDestroy: -1\nkCustom: 10\n";
        let manifest = parse_module(text, location()).unwrap();
        assert_eq!(manifest.module_name, "foo");
        assert_eq!(manifest.version, "1.0");
        let entries: Vec<_> = manifest
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.id, e.line))
            .collect();
        assert_eq!(
            entries,
            [
                ("kCreate", Some(0), 5),
                ("kDestroy", None, 6),
                ("kCustom", Some(10), 7)
            ]
        );
    }

    #[test]
    fn module_manifest_reports_every_problem() {
        let text = "namespace: chimaera\nversion: 1\nkFoo: -3\nbar: 1\n";
        let errors = parse_module(text, location()).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("no `module_name`"));
        assert!(errors[1].contains("`kFoo` in `m.yaml:3` is `-3`"));
        assert!(errors[2].contains("unexpected key `bar` in `m.yaml:4`"));
    }

    #[test]
    fn malformed_yaml_names_line_and_column() {
        let errors = parse_module("module_name: foo\n  bad: [\n", location()).unwrap_err();
        assert!(
            errors[0].starts_with("malformed manifest `m.yaml:2:"),
            "{errors:?}"
        );
        assert!(!errors[0].contains(" at line "), "{errors:?}");
    }
}
