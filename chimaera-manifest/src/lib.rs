//! # chimaera-manifest — one reader and one rule book for chimaera manifests
//!
//! A chimod's `chimaera_mod.yaml` and its repository's `chimaera_repo.yaml` are checked
//! in two places: by `#[chimod]` while the module compiles (against its code), and by
//! `chimaera repo check` (a whole repository, against the linked build). Both use this
//! crate, so there is one parser and one table of inherited ids.
//!
//! Nothing here fails with a string: every problem is a [`Problem`] — a [`Place`] (file,
//! line and column of the offending YAML token) and a typed [`ProblemKind`] whose
//! message ends with the fix. The macros turn each into a compile error on the Rust
//! token at fault; the CLI prints `file:line:column: message`.
//!
//! ```
//! use chimaera_manifest::{parse_module, ManifestPath};
//!
//! let path = ManifestPath::in_dir(".".as_ref(), "chimaera_mod.yaml".as_ref());
//! let text = "module_name: kv\nnamespace: demo\nversion: 1.0.0\nkCreate: 0\nkPut: 5\n";
//! let manifest = parse_module(text, path).unwrap();
//! let problems: Vec<String> = manifest.check().iter().map(|p| p.to_string()).collect();
//! assert!(problems[0].starts_with("chimaera_mod.yaml:5:7: custom method `kPut: 5`"));
//! ```
//!
//! Invariants: reading never panics, whatever the file holds; the YAML library is named
//! only in the private `yaml` module and no type of it is public.
mod module;
mod place;
mod problem;
mod repo;
pub mod repository;
pub mod rules;
mod yaml;

pub use module::{is_entry_name, parse_module, read_module, Entry, Field, ModuleManifest};
pub use place::{find_repo, locate, Env, ManifestPath, Place, MODULE_FILE, REPO_FILE};
pub use problem::{Problem, ProblemKind};
pub use repo::{parse_repo, read_repo, RepoManifest};
pub use rules::{FIRST_CUSTOM_ID, INHERITED};
