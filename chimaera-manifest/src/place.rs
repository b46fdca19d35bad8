//! Where manifests are, and how messages name them.
//!
//! A [`ManifestPath`] keeps a file twice: absolute and lexically normalized (for
//! reading, for `include_str!`, for comparing two attributes' manifests), and as a
//! *display* string for messages. A display path is never absolute when it can be
//! avoided — relative to the compiler's working directory or the crate, else to the
//! source file — so compiler output does not depend on where the repository is cloned.
//!
//! A [`Place`] is a position in a manifest: the display path, and the 1-based line and
//! column of the token at fault (`0` when the problem is the whole file, like a
//! missing key). It prints as `file:line:column`, the form editors jump to.
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// File name of a module manifest.
pub const MODULE_FILE: &str = "chimaera_mod.yaml";
/// File name of a repository manifest.
pub const REPO_FILE: &str = "chimaera_repo.yaml";

/// A manifest file: where it is, and how messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestPath {
    /// Absolute and lexically normalized when built by [`locate`] or [`find_repo`].
    pub path: PathBuf,
    /// For messages; see the module docs.
    pub display: String,
}

impl ManifestPath {
    /// `relative` inside directory `dir`, named in messages as `dir` names it (without a
    /// leading `./`).
    pub fn in_dir(dir: &Path, relative: &Path) -> ManifestPath {
        let path = dir.join(relative);
        let display = if dir == Path::new(".") {
            relative.display().to_string()
        } else {
            path.display().to_string()
        };
        ManifestPath { path, display }
    }

    /// A place in this file.
    pub fn at(&self, line: usize, column: usize) -> Place {
        Place {
            file: self.display.clone(),
            line,
            column,
        }
    }

    /// The file as a whole.
    pub fn whole(&self) -> Place {
        self.at(0, 0)
    }
}

/// A position in a manifest; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    /// The file's display path.
    pub file: String,
    /// 1-based line, `0` for the whole file.
    pub line: usize,
    /// 1-based column, `0` when only the line is known.
    pub column: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}", self.file),
            (line, 0) => write!(f, "{}:{line}", self.file),
            (line, column) => write!(f, "{}:{line}:{column}", self.file),
        }
    }
}

/// Where a macro runs: the directories paths are resolved against.
#[derive(Clone, Debug, Default)]
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

/// The module manifest a `#[chimod]` attribute refers to (`written` is its
/// `manifest = "…"`, relative to the source file like `include_str!`; by default
/// `chimaera_mod.yaml` in `$CARGO_MANIFEST_DIR`).
pub fn locate(env: &Env, written: Option<&str>) -> ManifestPath {
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
    ManifestPath { path, display }
}

/// The nearest `chimaera_repo.yaml` in the module manifest's directory or above.
pub fn find_repo(env: &Env, module: &ManifestPath) -> Option<ManifestPath> {
    let mut dir = module.path.parent();
    while let Some(current) = dir {
        let candidate = current.join(REPO_FILE);
        if candidate.is_file() {
            let display = display_path(env, &candidate, None);
            return Some(ManifestPath {
                path: candidate,
                display,
            });
        }
        dir = current.parent();
    }
    None
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
    fn places_print_as_editors_expect() {
        let file = ManifestPath::in_dir(Path::new("."), Path::new("m.yaml"));
        assert_eq!(file.at(3, 7).to_string(), "m.yaml:3:7");
        assert_eq!(file.at(3, 0).to_string(), "m.yaml:3");
        assert_eq!(file.whole().to_string(), "m.yaml");
        let file = ManifestPath::in_dir(Path::new("repo"), Path::new("m.yaml"));
        assert_eq!(file.whole().to_string(), "repo/m.yaml");
    }
}
