//! The hostfile: which nodes form a cluster, one host per line, node id = line index
//! after expansion.
//!
//! ```text
//! # comments run to the end of a line; blank lines are skipped
//! node[01-04]          # node01 node02 node03 node04 (the zero padding is kept)
//! compute[1-2,7]-ib    # compute1-ib compute2-ib compute7-ib
//! 10.0.0.9:9600        # a host with its own port (else `networking.port`)
//! [fe80::1]:9600       # an IPv6 address, bracketed when a port follows
//! ```
//!
//! # Invariants
//!
//! * A parsed [`Hostfile`] has at least one host and at most [`MAX_HOSTS`]; no host
//!   name is empty; a port is `1..=65535`.
//! * Every error names the 1-based line and what is wrong with it
//!   ([`HostfileError::Line`]); parsing never panics, whatever the bytes.
//! * Ranges expand in order, left to right; a range's numbers keep the width of its lower
//!   bound when that bound has a leading zero (`[01-16]` → `01`…`16`, `[8-10]` → `8`…`10`).
use std::fmt;
use std::path::{Path, PathBuf};

/// The most hosts a hostfile may expand to.
pub const MAX_HOSTS: usize = 65_536;

/// One node of the cluster as its hostfile line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    /// Host name or IP address (without brackets for IPv6).
    pub host: String,
    /// Its own port, if the line gave one (else the cluster's `networking.port`).
    pub port: Option<u16>,
    /// The 1-based line it came from.
    pub line: usize,
}

impl HostEntry {
    /// `host:port` with `default_port` when the line gave none (IPv6 bracketed).
    pub fn address(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

impl fmt::Display for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => f.write_str(&self.address(port)),
            None => f.write_str(&self.host),
        }
    }
}

/// The nodes of a cluster, in node-id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hostfile {
    hosts: Vec<HostEntry>,
}

/// Why a hostfile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostfileError {
    /// The file could not be read.
    #[error("cannot read hostfile {}: {source}; fix `networking.hostfile`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a host.
    #[error("hostfile line {line} (`{text}`): {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The line as written (without its comment).
        text: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// No host at all.
    #[error("the hostfile lists no host; write one host per line, or leave `networking.hostfile` out for a single node")]
    Empty,
    /// The ranges expand to too many hosts.
    #[error("the hostfile expands to more than {max} hosts (line {line} goes past it)")]
    TooManyHosts {
        /// The line at which the limit was passed.
        line: usize,
        /// [`MAX_HOSTS`].
        max: usize,
    },
}

impl Hostfile {
    /// Reads and parses the hostfile at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Hostfile, HostfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| HostfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Hostfile::parse(&text)
    }

    /// Parses hostfile text.
    pub fn parse(text: &str) -> Result<Hostfile, HostfileError> {
        let mut hosts = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let fail = |problem: String| HostfileError::Line {
                line,
                text: content.to_owned(),
                problem,
            };
            if content.split_whitespace().nth(1).is_some() {
                return Err(fail(
                    "has more than one word; write one host per line".to_owned(),
                ));
            }
            let (pattern, port) = split_port(content).map_err(fail)?;
            let names =
                expand(pattern, MAX_HOSTS - hosts.len()).map_err(|problem| match problem {
                    Expand::Bad(problem) => fail(problem),
                    Expand::TooMany => HostfileError::TooManyHosts {
                        line,
                        max: MAX_HOSTS,
                    },
                })?;
            hosts.extend(names.into_iter().map(|host| HostEntry { host, port, line }));
        }
        if hosts.is_empty() {
            return Err(HostfileError::Empty);
        }
        Ok(Hostfile { hosts })
    }

    /// A hostfile of these hosts (for tests and tools that build a cluster in code).
    pub fn from_hosts(hosts: Vec<HostEntry>) -> Result<Hostfile, HostfileError> {
        if hosts.is_empty() {
            return Err(HostfileError::Empty);
        }
        if hosts.len() > MAX_HOSTS {
            return Err(HostfileError::TooManyHosts {
                line: MAX_HOSTS + 1,
                max: MAX_HOSTS,
            });
        }
        Ok(Hostfile { hosts })
    }

    /// The hosts, in node-id order.
    pub fn hosts(&self) -> &[HostEntry] {
        &self.hosts
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a hostfile has at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// Splits `host:port` (or `[v6]:port`, or a bare host) into its parts.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let parse_port = |port: &str| -> Result<u16, String> {
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("`{port}` is not a port; use 1 to 65535")),
        }
    };
    if let Some(rest) = text.strip_prefix('[') {
        // `[v6]` or `[v6]:port` — unless the bracket is a range (`[1-4]node` is a name).
        if let Some((address, after)) = rest.split_once(']') {
            if address.contains(':') {
                return match after {
                    "" => Ok((address, None)),
                    _ => match after.strip_prefix(':') {
                        Some(port) => Ok((address, Some(parse_port(port)?))),
                        None => Err(format!(
                            "`{after}` after an IPv6 address; write `[address]:port`"
                        )),
                    },
                };
            }
        }
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            if host.is_empty() {
                return Err("has a port but no host; write `host:port`".to_owned());
            }
            Ok((host, Some(parse_port(port)?)))
        }
        // A bare IPv6 address: no port possible without brackets.
        _ => Ok((text, None)),
    }
}

enum Expand {
    Bad(String),
    TooMany,
}

/// Expands the first `[...]` range of `pattern` (then the rest, recursively) into names;
/// at most `room` of them.
fn expand(pattern: &str, room: usize) -> Result<Vec<String>, Expand> {
    let Some(open) = pattern.find('[') else {
        if pattern.contains(']') {
            return Err(Expand::Bad("has a `]` without its `[`".to_owned()));
        }
        check_name(pattern)?;
        return if room == 0 {
            Err(Expand::TooMany)
        } else {
            Ok(vec![pattern.to_owned()])
        };
    };
    let (prefix, rest) = pattern.split_at(open);
    let Some(close) = rest.find(']') else {
        return Err(Expand::Bad("has a `[` without its `]`".to_owned()));
    };
    let body = &rest[1..close];
    let suffix = &rest[close + 1..];
    if prefix.contains(']') {
        return Err(Expand::Bad("has a `]` without its `[`".to_owned()));
    }
    check_name(prefix)?;
    let mut numbers = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let parse = |text: &str| -> Result<u64, Expand> {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Expand::Bad(format!(
                    "the range `[{body}]` has `{text}` where a number belongs; write ranges like `[01-16]` or `[1,3,5-7]`"
                )));
            }
            text.parse::<u64>()
                .map_err(|_| Expand::Bad(format!("the number `{text}` in `[{body}]` is too large")))
        };
        let (from, to) = (parse(low)?, parse(high)?);
        if from > to {
            return Err(Expand::Bad(format!(
                "the range `{part}` runs backwards; write the lower bound first"
            )));
        }
        let width = if low.len() > 1 && low.starts_with('0') {
            low.len()
        } else {
            0
        };
        if to - from >= room as u64 {
            return Err(Expand::TooMany);
        }
        numbers.extend((from..=to).map(|n| format!("{n:0width$}")));
    }
    let mut names = Vec::new();
    for number in numbers {
        let left = room.checked_sub(names.len()).ok_or(Expand::TooMany)?;
        let tails = expand(suffix, left)?;
        for tail in tails {
            if names.len() >= room {
                return Err(Expand::TooMany);
            }
            names.push(format!("{prefix}{number}{tail}"));
        }
    }
    Ok(names)
}

/// A host name (or the part of one around a range) holds only what DNS names and IP
/// addresses hold.
fn check_name(text: &str) -> Result<(), Expand> {
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '%')))
    {
        Some(bad) => Err(Expand::Bad(format!(
            "`{bad}` cannot be part of a host name; use letters, digits, `-`, `.`, `_`, or ranges like `node[01-16]`"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        Hostfile::parse(text)
            .unwrap()
            .hosts()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn line_error(text: &str) -> (usize, String) {
        match Hostfile::parse(text) {
            Err(HostfileError::Line { line, problem, .. }) => (line, problem),
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn hosts_ports_comments_and_blank_lines() {
        let text = "# the lab\n\nalpha\n  beta:9600  # with a port\n10.0.0.3\n[::1]:7000\n::1\n";
        assert_eq!(
            names(text),
            ["alpha", "beta:9600", "10.0.0.3", "[::1]:7000", "::1"]
        );
        let file = Hostfile::parse(text).unwrap();
        assert_eq!(file.hosts()[1].line, 4);
        assert_eq!(file.hosts()[0].address(9513), "alpha:9513");
        assert_eq!(file.hosts()[4].address(9513), "[::1]:9513");
    }

    #[test]
    fn ranges_expand_in_order_and_keep_zero_padding() {
        assert_eq!(names("node[01-03]"), ["node01", "node02", "node03"]);
        assert_eq!(
            names("compute[1-2,7]-ib"),
            ["compute1-ib", "compute2-ib", "compute7-ib"]
        );
        assert_eq!(names("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(
            names("r[1-2]c[1-2]:99"),
            ["r1c1:99", "r1c2:99", "r2c1:99", "r2c2:99"]
        );
        assert_eq!(Hostfile::parse("node[01-16]").unwrap().len(), 16);
    }

    #[test]
    fn bad_lines_are_named_with_what_is_wrong() {
        let cases = [
            ("a\nnode[3-1]\n", 2, "backwards"),
            ("node[1-x]", 1, "where a number belongs"),
            ("node[1-2", 1, "without its `]`"),
            ("node]1", 1, "without its `[`"),
            ("a\n\nhost:0", 3, "not a port"),
            ("host:99999", 1, "not a port"),
            ("host:http", 1, "not a port"),
            (":80", 1, "no host"),
            ("two hosts", 1, "one host per line"),
            ("bad/name", 1, "cannot be part of a host name"),
            ("[::1]x", 1, "after an IPv6 address"),
        ];
        for (text, line, problem) in cases {
            let (found_line, found) = line_error(text);
            assert_eq!(found_line, line, "{text:?}: {found}");
            assert!(found.contains(problem), "{text:?}: {found}");
        }
    }

    #[test]
    fn empty_and_huge_files_are_refused() {
        assert!(matches!(
            Hostfile::parse("# nothing\n\n"),
            Err(HostfileError::Empty)
        ));
        assert!(matches!(
            Hostfile::parse("n[0-99999999999]"),
            Err(HostfileError::TooManyHosts { line: 1, .. })
        ));
        assert!(matches!(
            Hostfile::parse("a[0-300]b[0-300]"),
            Err(HostfileError::TooManyHosts { line: 1, .. })
        ));
        let error = Hostfile::parse("ok\nnode[1-x]").unwrap_err().to_string();
        assert!(
            error.starts_with("hostfile line 2 (`node[1-x]`)"),
            "{error}"
        );
    }
}
