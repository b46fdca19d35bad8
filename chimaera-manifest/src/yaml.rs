//! The one place that names the YAML library: a manifest's text becomes a tree of
//! [`Node`]s of our own, every one carrying the line and column of its token.
//!
//! The library (`marked-yaml`) stays private: no type of it leaves this module, so
//! replacing it touches this file and one dependency line. It loads one document whose
//! top level is a mapping, rejects anchors, aliases and tags (a manifest needs none),
//! and reports a key written twice as an error instead of keeping the last value.
//! Scalars stay text: whether `10` is an id is the reader's decision, and a quoted
//! `"10"` is kept apart from a plain `10` (see [`Scalar::plain`]).
use crate::place::{ManifestPath as File, Place};

/// A scalar: its text and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scalar {
    pub text: String,
    /// Written without quotes (so `10` may be read as a number, `"10"` may not).
    pub plain: bool,
    pub place: Place,
}

/// A node of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Scalar(Scalar),
    Sequence(Vec<Node>, Place),
    Mapping(Vec<(Scalar, Node)>, Place),
}

impl Node {
    pub(crate) fn place(&self) -> &Place {
        match self {
            Node::Scalar(scalar) => &scalar.place,
            Node::Sequence(_, place) | Node::Mapping(_, place) => place,
        }
    }
}

/// Why a text is not a manifest's YAML: the message, and where the parser stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub place: Place,
}

/// The top-level mapping of `text` (read from `file`), keys in file order.
pub(crate) fn parse_mapping(text: &str, file: &File) -> Result<Vec<(Scalar, Node)>, SyntaxError> {
    use marked_yaml::LoadError;
    let options = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
        .toplevel_mapping();
    let at = |marker: &marked_yaml::Marker| file.at(marker.line(), marker.column());
    let error = |message: &str, marker: &marked_yaml::Marker| SyntaxError {
        message: message.to_owned(),
        place: at(marker),
    };
    match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(root) => match convert(&root, file) {
            Node::Mapping(entries, _) => Ok(entries),
            other => Err(SyntaxError {
                message: "expected `key: value` lines".to_owned(),
                place: other.place().clone(),
            }),
        },
        Err(LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m)) => {
            Err(error("expected `key: value` lines", &m))
        }
        Err(LoadError::UnexpectedAnchor(m)) => Err(error(
            "anchors and aliases are not allowed in a manifest; write the value out",
            &m,
        )),
        Err(LoadError::MappingKeyMustBeScalar(m)) => Err(error(
            "a key must be a plain name, not a list or mapping",
            &m,
        )),
        Err(LoadError::UnexpectedTag(m)) => Err(error(
            "YAML tags (`!…`) are not allowed in a manifest; remove the tag",
            &m,
        )),
        Err(LoadError::ScanError(m, scan)) => Err(error(scan.info(), &m)),
        Err(LoadError::DuplicateKey(keys)) => {
            let first = keys.prev_key.span().start().map_or(0, |m| m.line());
            let message = format!(
                "`{}` is written twice (first on line {first}); keep one",
                keys.key.as_str()
            );
            let place = keys.key.span().start().map_or_else(|| file.whole(), at);
            Err(SyntaxError { message, place })
        }
    }
}

fn convert(node: &marked_yaml::Node, file: &File) -> Node {
    let place = |span: &marked_yaml::Span| {
        span.start()
            .map_or_else(|| file.whole(), |m| file.at(m.line(), m.column()))
    };
    let scalar = |scalar: &marked_yaml::types::MarkedScalarNode| Scalar {
        text: scalar.as_str().to_owned(),
        plain: scalar.may_coerce(),
        place: place(scalar.span()),
    };
    match node {
        marked_yaml::Node::Scalar(value) => Node::Scalar(scalar(value)),
        marked_yaml::Node::Sequence(items) => Node::Sequence(
            items.iter().map(|item| convert(item, file)).collect(),
            place(items.span()),
        ),
        marked_yaml::Node::Mapping(entries) => Node::Mapping(
            entries
                .iter()
                .map(|(key, value)| (scalar(key), convert(value, file)))
                .collect(),
            place(entries.span()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> File {
        File {
            path: "/ws/m.yaml".into(),
            display: "m.yaml".to_owned(),
        }
    }

    #[test]
    fn keys_and_values_carry_line_and_column() {
        let entries = parse_mapping("a: 1\nlist:\n  - x\n  - \"y\"\n", &file()).unwrap();
        let (key, value) = &entries[0];
        assert_eq!(
            (key.text.as_str(), key.place.line, key.place.column),
            ("a", 1, 1)
        );
        let Node::Scalar(one) = value else { panic!() };
        assert_eq!((one.place.line, one.place.column, one.plain), (1, 4, true));
        let Node::Sequence(items, _) = &entries[1].1 else {
            panic!()
        };
        let Node::Scalar(y) = &items[1] else { panic!() };
        assert_eq!((y.text.as_str(), y.plain, y.place.line), ("y", false, 4));
    }

    #[test]
    fn every_unsupported_form_is_an_error_with_a_place() {
        for (text, needle, line) in [
            ("a: 1\na: 2\n", "`a` is written twice (first on line 1)", 2),
            ("a: &x 1\nb: *x\n", "anchors", 1),
            ("- a\n", "expected `key: value` lines", 1),
            ("a: !!str b\n", "tags", 1),
            ("a: [1, 2\n", "expected ',' or ']'", 2),
            ("? [a]\n: b\n", "plain name", 1),
        ] {
            let error = parse_mapping(text, &file()).unwrap_err();
            assert!(error.message.contains(needle), "{text:?}: {error:?}");
            assert_eq!(error.place.line, line, "{text:?}: {error:?}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_mapping() {
        assert_eq!(parse_mapping("", &file()).unwrap(), []);
        assert_eq!(parse_mapping("# only a comment\n", &file()).unwrap(), []);
    }
}
