//! Compose: pools described in YAML, created through the admin chimod.
//!
//! A `compose:` entry of the config (see [`crate::config`]) or of a file given to
//! `chimaera compose FILE` names a module, a pool name, a container count and free-form
//! `params` (a [`Params`]: opaque, so the YAML library stays private to chimaera). The
//! module turns those params into the archived input of its `create` task by
//! implementing [`Composable`]; the pool is then got-or-created through the admin
//! chimod like any other, so composing the same file twice is harmless and composing a
//! name that exists with other params is a [`TaskError::PoolMismatch`].
//!
//! The conversion happens in the process that reads the YAML (the runtime at boot, or
//! the `chimaera compose` client), with the modules *it* links: [`prepare`] converts every
//! entry before any pool is created, so a typo in the last entry creates nothing.
//!
//! A module opts in by implementing [`Composable`] — `#[chimod(composable)]` generates
//! it — and being registered with
//! [`RuntimeBuilder::composable_module`](crate::RuntimeBuilder::composable_module); the
//! admin module is never composed (the runtime creates its pool itself).
//!
//! # Failure modes
//!
//! Every failure is a [`ComposeError`] naming the pool and the module: a module not
//! linked, one that is not composable, params it rejects (an unknown key, a value of the
//! wrong type), or the admin refusing the pool.
use crate::admin_api::{self, PoolInfo, PoolOptions};
use crate::client::Client;
use crate::codec::Bytes;
use crate::config::PoolSpec;
use crate::error::TaskError;
use crate::query::PoolQuery;
use crate::runtime::module::{ChiMod, ModuleEntry};
use serde::de::DeserializeOwned;

/// A chimod whose pools can be created from YAML parameters.
///
/// `#[chimod(composable)]` on the impl block implements it: the entry's `params` are
/// deserialized into the `create` task's parameter type (which derives serde's
/// `Deserialize`, e.g. through `#[chimaera::wire(compose)]`) and archived as its input.
/// Implement it by hand only to convert params in a way serde cannot (bdev accepts
/// `capacity: 1GB` or a byte count): read them with [`Params::deserialize`] and archive
/// the input with the generated `save_in`.
pub trait Composable: ChiMod {
    /// The archived input of the `create` task for these params.
    fn create_input(params: &Params) -> Result<Bytes, TaskError>;
}

impl ModuleEntry {
    /// The registry entry of chimod `M`, which pools can also be composed of (created
    /// from YAML parameters).
    pub fn composable<M: Composable>() -> Self {
        ModuleEntry {
            compose: Some(M::create_input),
            ..Self::of::<M>()
        }
    }
}

/// The `params` of a compose entry: a mapping of parameter names to values, read from
/// the YAML of a config or compose file (empty when the entry gave none).
///
/// Opaque on purpose — the YAML library is private to chimaera — and read with
/// [`Params::deserialize`] into any type that derives serde's `Deserialize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params(serde_yaml_ng::Value);

impl Params {
    /// No parameters: an empty mapping.
    pub fn empty() -> Params {
        Params(serde_yaml_ng::Value::Mapping(serde_yaml_ng::Mapping::new()))
    }

    /// Deserializes the params into `T` for a pool of `module`; a failure is a
    /// [`TaskError::BadComposeParams`] naming the module and the offending key.
    pub fn deserialize<T: DeserializeOwned>(&self, module: &str) -> Result<T, TaskError> {
        serde_yaml_ng::from_value(self.0.clone()).map_err(|err| TaskError::BadComposeParams {
            module: module.to_owned(),
            detail: err.to_string(),
        })
    }

    /// Whether the params are a mapping (the loaders accept nothing else).
    pub(crate) fn is_mapping(&self) -> bool {
        self.0.is_mapping()
    }
}

impl Default for Params {
    fn default() -> Params {
        Params::empty()
    }
}

/// Params written as YAML text, e.g. `"{ label: demo }"` (empty text: no params).
impl std::str::FromStr for Params {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Params, ParamsError> {
        serde_yaml_ng::from_str(text).map_err(|err| ParamsError {
            line: err.location().map(|at| at.line()),
            column: err.location().map(|at| at.column()),
            message: err.to_string(),
        })
    }
}

impl<'de> serde::Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Params, D::Error> {
        match serde_yaml_ng::Value::deserialize(deserializer)? {
            serde_yaml_ng::Value::Null => Ok(Params::empty()),
            value => Ok(Params(value)),
        }
    }
}

/// Why a text is not YAML params.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("params are not valid YAML: {message}; write a mapping like `{{ key: value }}`")]
pub struct ParamsError {
    /// The parser's message.
    pub message: String,
    /// 1-based line of the fault, when known.
    pub line: Option<usize>,
    /// 1-based column of the fault, when known.
    pub column: Option<usize>,
}

/// Why a compose entry could not be turned into a pool.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// No module of that name is linked into this binary.
    #[error(
        "pool `{pool}`: no module named `{module}` is linked into this binary (linked: \
         {linked}); fix `module:` or link the module"
    )]
    UnknownModule {
        /// The pool's name.
        pool: String,
        /// The module named by the entry.
        module: String,
        /// The linked modules, comma-separated.
        linked: String,
    },
    /// The entry names the admin module.
    #[error(
        "pool `{pool}`: the admin pool is created by the runtime itself and cannot be composed; \
         remove this entry"
    )]
    Admin {
        /// The pool's name.
        pool: String,
    },
    /// The module is linked but does not implement [`Composable`].
    #[error(
        "pool `{pool}`: module `{module}` cannot be composed from YAML; implement \
         chimaera::compose::Composable for it and register it with \
         RuntimeBuilder::composable_module"
    )]
    NotComposable {
        /// The pool's name.
        pool: String,
        /// The module.
        module: String,
    },
    /// The module rejected the entry's params.
    #[error("pool `{pool}`: {}", failure_text(source))]
    Params {
        /// The pool's name.
        pool: String,
        /// The module.
        module: String,
        /// What the module said.
        #[source]
        source: TaskError,
    },
    /// The admin chimod could not get or create the pool.
    #[error("pool `{pool}` (module `{module}`) was not created: {source}")]
    Create {
        /// The pool's name.
        pool: String,
        /// The module.
        module: String,
        /// What the runtime said.
        #[source]
        source: TaskError,
    },
}

/// What a failure says, without the "task failed" prefix of a plain failure (the
/// module's own message already says what failed).
fn failure_text(error: &TaskError) -> String {
    match error {
        TaskError::Failed { message } => message.clone(),
        other => other.to_string(),
    }
}

/// A compose entry whose params were converted: ready to be created.
#[derive(Debug)]
pub struct PreparedPool {
    spec: PoolSpec,
    create_input: Bytes,
}

impl PreparedPool {
    /// The entry this pool comes from.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// Gets or creates the pool through the admin chimod of `client`'s runtime.
    pub fn create(&self, client: &Client) -> Result<PoolInfo, ComposeError> {
        admin_api::get_or_create_pool(
            client,
            PoolQuery::Local,
            &self.spec.module,
            &self.spec.name,
            PoolOptions::containers(self.spec.containers),
            &self.create_input,
        )
        .map_err(|source| ComposeError::Create {
            pool: self.spec.name.clone(),
            module: self.spec.module.clone(),
            source,
        })
    }
}

/// Converts every entry of `specs` with the modules in `modules`; fails on the first
/// entry that cannot be converted, before anything is created.
pub fn prepare<'m>(
    modules: impl IntoIterator<Item = &'m ModuleEntry>,
    specs: &[PoolSpec],
) -> Result<Vec<PreparedPool>, ComposeError> {
    let modules: Vec<&ModuleEntry> = modules.into_iter().collect();
    specs
        .iter()
        .map(|spec| {
            let pool = || spec.name.clone();
            if spec.module == "admin" {
                return Err(ComposeError::Admin { pool: pool() });
            }
            let entry = modules
                .iter()
                .find(|entry| entry.info.name == spec.module)
                .ok_or_else(|| ComposeError::UnknownModule {
                    pool: pool(),
                    module: spec.module.clone(),
                    linked: modules
                        .iter()
                        .map(|entry| entry.info.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let compose = entry.compose.ok_or_else(|| ComposeError::NotComposable {
                pool: pool(),
                module: spec.module.clone(),
            })?;
            let create_input = compose(&spec.params).map_err(|source| ComposeError::Params {
                pool: pool(),
                module: spec.module.clone(),
                source,
            })?;
            Ok(PreparedPool {
                spec: spec.clone(),
                create_input,
            })
        })
        .collect()
}
