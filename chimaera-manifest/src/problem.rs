//! What is wrong with a manifest, as data: a [`Problem`] is a [`Place`] and a typed
//! [`ProblemKind`] whose message says what to do.
//!
//! Consumers choose how to show it: `chimaera repo check` prints `file:line:column:
//! message`; `#[chimod]` puts the same text into a compile error on the Rust token at
//! fault. Messages never repeat the place (the consumer puts it in front), are
//! lower-case, and end with the fix.
use crate::place::Place;
use std::fmt;

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: the token at fault, or the whole file.
    pub place: Place,
    /// What.
    pub kind: ProblemKind,
}

impl Problem {
    /// A problem at `place`.
    pub fn new(place: Place, kind: ProblemKind) -> Problem {
        Problem { place, kind }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.kind)
    }
}

impl std::error::Error for Problem {}

/// The kinds of problem, each with its fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file could not be read.
    #[error("cannot read the manifest: {error}; create it or point at the right file")]
    Unreadable {
        /// The system's message.
        error: String,
    },
    /// The text is not YAML of the shape a manifest has.
    #[error("malformed manifest: {message}")]
    Malformed {
        /// The parser's message.
        message: String,
    },
    /// A required key is absent.
    #[error("no `{key}`; add a `{key}: …` line")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A key that must hold one plain value holds a list, a mapping or nothing.
    #[error("`{key}` must be a plain value, e.g. `{key}: chimaera`")]
    NotPlain {
        /// The key.
        key: &'static str,
    },
    /// A module manifest key that is neither a field nor a method entry.
    #[error(
        "unexpected key `{key}`; expected `module_name`, `namespace`, `version` or a method \
         entry like `kCustom: 10`"
    )]
    UnexpectedKey {
        /// The key as written.
        key: String,
    },
    /// A method entry whose value is not an id.
    #[error("`{entry}` is `{value}`; a method id is 0 or more, or -1 for not implemented")]
    BadId {
        /// The entry, e.g. `kCustom`.
        entry: String,
        /// The value as written.
        value: String,
    },
    /// An inherited method with another id than its fixed one.
    #[error("`{entry}` is inherited with the fixed id {fixed}, not {id}; write `{entry}: {fixed}` (or -1)")]
    InheritedWrongId {
        /// The entry, e.g. `kRecover`.
        entry: String,
        /// Its fixed id.
        fixed: u32,
        /// The id written.
        id: u32,
    },
    /// A custom method with an id reserved for inherited ones.
    #[error(
        "custom method `{entry}: {id}` uses an id below {first_custom}, reserved for the \
         inherited methods ({inherited}); use {first_custom} or more",
        first_custom = crate::FIRST_CUSTOM_ID,
        inherited = crate::rules::inherited_list()
    )]
    ReservedId {
        /// The entry.
        entry: String,
        /// The id written.
        id: u32,
    },
    /// Two entries with one id.
    #[error("`{first}` and `{entry}` are both {id}; give each method its own id")]
    DuplicateId {
        /// The earlier entry.
        first: String,
        /// This entry.
        entry: String,
        /// The id.
        id: u32,
    },
    /// `kCreate: -1`.
    #[error("`kCreate` is -1; every module implements it: write `kCreate: 0`")]
    CreateDisabled,
    /// No `kCreate` entry.
    #[error("no `kCreate`; every module implements it: add `kCreate: 0`")]
    CreateMissing,
    /// The module's namespace is not its repository's.
    #[error(
        "namespace `{module}` differs from namespace `{repo}` in `{repo_file}`; a module lives \
         in its repository's namespace"
    )]
    NamespaceMismatch {
        /// The module manifest's namespace.
        module: String,
        /// The repository manifest's namespace.
        repo: String,
        /// The repository manifest's display path.
        repo_file: String,
    },
    /// No repository manifest where one was looked for.
    #[error("not found; is {dir} the root of a chimod repository?")]
    RepoNotFound {
        /// The directory searched.
        dir: String,
    },
    /// The repository manifest has no `modules:` list.
    #[error("no `modules:` list; list the repository's modules by name")]
    NoModuleList,
    /// A module listed twice.
    #[error("module `{name}` is listed twice; list it once")]
    ListedTwice {
        /// The module.
        name: String,
    },
    /// A `modules:` item that cannot be a module (directory) name.
    #[error("`{value}` is not a module name; list module names, one per line")]
    NotAModuleName {
        /// The item as written.
        value: String,
    },
    /// A listed module without a manifest.
    #[error(
        "module `{name}` is listed in {repo_file} but has no manifest: neither {} exists; \
         create one or remove the module from the list",
        candidates.join(" nor ")
    )]
    NoModuleManifest {
        /// The module.
        name: String,
        /// The repository manifest's file name.
        repo_file: &'static str,
        /// The paths looked at.
        candidates: Vec<String>,
    },
    /// A module manifest under `chimods/` whose module is not listed.
    #[error("module `{name}` is not listed under `modules:` in {repo_file}; add it")]
    NotListed {
        /// The module.
        name: String,
        /// The repository manifest's display path.
        repo_file: String,
    },
    /// A module manifest naming another module than the repository lists.
    #[error("`module_name: {module_name}`, but {repo_file} lists this module as `{listed}`; make them equal")]
    ModuleNameMismatch {
        /// The manifest's `module_name`.
        module_name: String,
        /// The name in the repository's list.
        listed: String,
        /// The repository manifest's file name.
        repo_file: &'static str,
    },
}
