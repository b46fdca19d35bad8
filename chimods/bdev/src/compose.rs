//! `compose:` entries for bdev pools: YAML params → the `create` task's input.
//!
//! ```yaml
//! compose:
//!   - module: bdev
//!     name: /var/tmp/disk0.img     # a file device: the pool name is the path
//!     params: { bdev_type: file, capacity: 1GB, io_depth: 32, alignment: 4096, direct: true }
//!   - module: bdev
//!     name: ram0
//!     params: { bdev_type: ram, capacity: 256MiB }
//! ```
//!
//! `capacity` takes a byte count or a size with a unit (`parse_size`); every key is
//! optional with the defaults of [`BdevParams`]; unknown keys are errors.
use crate::{bdev_tasks, Bdev, BdevParams, BdevType};
use chimaera_core::compose::{Composable, Params};
use chimaera_core::config::parse_size;
use chimaera_core::Bytes;
use chimaera_core::{ChiMod, TaskError};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeParams {
    #[serde(default)]
    bdev_type: Option<String>,
    #[serde(default)]
    capacity: Option<Capacity>,
    #[serde(default)]
    io_depth: Option<u32>,
    #[serde(default)]
    alignment: Option<u32>,
    #[serde(default)]
    direct: Option<bool>,
}

/// `capacity: 1073741824` or `capacity: 1GiB`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Capacity {
    Bytes(u64),
    Text(String),
}

fn bad(what: String) -> TaskError {
    TaskError::BadComposeParams {
        module: "bdev".to_owned(),
        detail: what,
    }
}

/// The create parameters a compose entry's `params` describe.
pub fn params_from_compose(params: &Params) -> Result<BdevParams, TaskError> {
    let raw: ComposeParams = params.deserialize("bdev")?;
    let mut out = BdevParams::default();
    if let Some(kind) = raw.bdev_type {
        out.bdev_type = match kind.to_ascii_lowercase().as_str() {
            "file" => BdevType::File,
            "ram" => BdevType::Ram,
            other => return Err(bad(format!("`bdev_type: {other}`; use `file` or `ram`"))),
        };
    }
    if let Some(capacity) = raw.capacity {
        out.total_size = match capacity {
            Capacity::Bytes(bytes) => bytes,
            Capacity::Text(text) => {
                parse_size(&text).map_err(|err| bad(format!("`capacity: {text}`: {err}")))?
            }
        };
    }
    if let Some(io_depth) = raw.io_depth {
        out.io_depth = io_depth;
    }
    if let Some(alignment) = raw.alignment {
        out.alignment = alignment;
    }
    if let Some(direct) = raw.direct {
        out.direct = direct;
    }
    Ok(out)
}

impl Composable for Bdev {
    fn create_input(params: &Params) -> Result<Bytes, TaskError> {
        let params = params_from_compose(params)?;
        <Bdev as ChiMod>::save_in(&bdev_tasks::TaskIn::Create((params,)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Params {
        text.parse().unwrap()
    }

    #[test]
    fn units_types_and_defaults() {
        let p = params_from_compose(&yaml("{bdev_type: ram, capacity: 256MiB}")).unwrap();
        assert_eq!((p.bdev_type, p.total_size), (BdevType::Ram, 256 << 20));
        assert_eq!((p.io_depth, p.alignment, p.direct), (32, 4096, false));
        let p = params_from_compose(&yaml("{capacity: 1GB, io_depth: 8, direct: true}")).unwrap();
        assert_eq!(
            (p.bdev_type, p.total_size, p.io_depth, p.direct),
            (BdevType::File, 1_000_000_000, 8, true)
        );
        assert_eq!(
            params_from_compose(&Params::empty()).unwrap(),
            BdevParams::default()
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("{bdev_type: tape}", "bdev_type"),
            ("{capacity: lots}", "capacity"),
            ("{capacty: 1GB}", "capacty"),
        ] {
            let err = params_from_compose(&yaml(text)).unwrap_err();
            assert!(
                matches!(
                    &err,
                    TaskError::BadComposeParams { module, detail }
                        if module == "bdev" && detail.contains(needle)
                ),
                "{text}: {err}"
            );
        }
    }
}
