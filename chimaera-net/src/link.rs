//! One peer as this node reaches it: its long-lived gRPC channel (one HTTP/2 connection,
//! every call multiplexed on it), connected lazily, and the backoff after failures.
//!
//! # Invariants
//!
//! * **At most one connection attempt at a time** per peer (`connecting` is held across
//!   it); calls that arrive meanwhile wait for its outcome instead of dialing too.
//! * **Backoff is bounded**: after the `n`-th failure in a row the next attempt waits
//!   `min(backoff_min * 2^(n-1), backoff_max)`; calls in that window fail at once with
//!   [`NetError::Unreachable`] (or [`NetError::Left`] for a peer that said it left)
//!   instead of piling up on a dead address.
//! * **A peer heard from is dialed at once**: an authenticated call from the peer ends
//!   the backoff window ([`Link::heard_from`]), so a node that failed to reach a peer
//!   before that peer started does not fail calls to it, now up, for up to
//!   `backoff_max` (a pool created meanwhile would miss that node for good).
//! * **A stale failure never drops a fresh channel**: each channel has a generation, and
//!   a call reports a broken link with the generation it used.

use crate::options::PeerTls;
use crate::wire::{transport_failure, CallFailure};
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{NetError, PeerState};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How much data may be in flight on one stream and on one connection before the
/// receiver acknowledges (both directions use the same windows): large enough that a big frame is not throttled to a trickle.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 4 << 20;
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// How often an idle connection is pinged, and how long a ping may go unanswered before
/// the connection counts as dead (a peer whose machine vanished sends no reset).
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One peer's connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) node: NodeId,
    pub(crate) address: String,
    endpoint: Endpoint,
    backoff_min: Duration,
    backoff_max: Duration,
    state: Mutex<LinkState>,
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct LinkState {
    channel: Option<(Channel, u64)>,
    generation: u64,
    phase: PeerState,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Link {
    /// The link to `node` at `address` (this node's own, for force-net, reports
    /// [`PeerState::Local`]); connections leave from `local_ip` when given, so that the
    /// peer sees this node's own address.
    pub(crate) fn new(
        node: NodeId,
        address: String,
        is_this_node: bool,
        connect_timeout: Duration,
        backoff: (Duration, Duration),
        local_ip: Option<IpAddr>,
        tls: Option<&PeerTls>,
    ) -> Result<Link, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|error| error.to_string())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .local_address(local_ip);
        if let Some(tls) = tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .timeout(connect_timeout);
            endpoint = endpoint
                .tls_config(config)
                .map_err(|error| error_chain(&error))?;
        }
        Ok(Link {
            node,
            address,
            endpoint,
            backoff_min: backoff.0,
            backoff_max: backoff.1,
            state: Mutex::new(LinkState {
                channel: None,
                generation: 0,
                phase: if is_this_node {
                    PeerState::Local
                } else {
                    PeerState::Connecting
                },
                failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        // The state is plain values updated in one step each: a panic elsewhere cannot
        // leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer's state as [`PeerNetwork::peers`](chimaera_core::peer::PeerNetwork::peers)
    /// reports it.
    pub(crate) fn phase(&self) -> PeerState {
        self.state().phase
    }

    /// The channel to the peer and its generation, connecting if there is none (unless
    /// the backoff after the last failure still runs).
    pub(crate) async fn channel(&self) -> Result<(Channel, u64), NetError> {
        if let Some(ready) = self.ready_channel()? {
            return Ok(ready);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(ready) = self.ready_channel()? {
            return Ok(ready);
        }
        match self.endpoint.connect().await {
            Ok(channel) => {
                let mut state = self.state();
                state.generation += 1;
                let generation = state.generation;
                state.channel = Some((channel.clone(), generation));
                state.phase = self.up_phase(state.phase);
                state.failures = 0;
                state.retry_at = None;
                tracing::debug!(node = self.node, address = %self.address, "connected to peer");
                Ok((channel, generation))
            }
            Err(error) => Err(self.broken(None, error_chain(&error))),
        }
    }

    /// The current channel, or `None` when a connection attempt may start now; an error
    /// while the backoff runs.
    fn ready_channel(&self) -> Result<Option<(Channel, u64)>, NetError> {
        let state = self.state();
        if let Some(ready) = &state.channel {
            return Ok(Some(ready.clone()));
        }
        match state.retry_at {
            Some(retry_at) if retry_at > Instant::now() => {
                if state.phase == PeerState::Left {
                    return Err(NetError::Left { node: self.node });
                }
                let wait = retry_at.saturating_duration_since(Instant::now());
                Err(self.unreachable(format!(
                    "{}; next connection attempt in {} ms",
                    state.last_error,
                    wait.as_millis()
                )))
            }
            _ => Ok(None),
        }
    }

    fn unreachable(&self, reason: String) -> NetError {
        NetError::Unreachable {
            node: self.node,
            reason,
        }
    }

    fn up_phase(&self, current: PeerState) -> PeerState {
        if current == PeerState::Local {
            PeerState::Local
        } else {
            PeerState::Up
        }
    }

    /// A call on the channel of `generation` (or a connection attempt, `None`) failed at
    /// the transport: drop that channel and schedule the next attempt. Returns whether
    /// the peer had said it left.
    pub(crate) fn fail(&self, generation: Option<u64>, reason: &str) -> bool {
        let mut state = self.state();
        if let (Some(generation), Some((_, current))) = (generation, &state.channel) {
            if generation != *current {
                return state.phase == PeerState::Left;
            }
        }
        state.channel = None;
        state.failures = state.failures.saturating_add(1);
        let doublings = state.failures.saturating_sub(1).min(30);
        let wait = self
            .backoff_min
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
        state.retry_at = Some(Instant::now() + wait);
        state.last_error = reason.to_owned();
        let left = state.phase == PeerState::Left;
        if !matches!(state.phase, PeerState::Left | PeerState::Local) {
            state.phase = PeerState::Down;
        }
        tracing::debug!(node = self.node, address = %self.address, reason, ?wait, "peer link failed");
        left
    }

    /// A call on the channel of `generation` (or a connection attempt, `None`) could not
    /// start for `reason`: drops the channel as [`fail`](Self::fail) does, and returns
    /// the error the caller gets.
    pub(crate) fn broken(&self, generation: Option<u64>, reason: String) -> NetError {
        if self.fail(generation, &reason) {
            NetError::Left { node: self.node }
        } else {
            transport_failure(self.node, reason)
        }
    }

    /// A call on the channel of `generation` ended with `failure` (from a status whose
    /// message is `message`): the peer left, or the link broke, or neither.
    pub(crate) fn call_failed(&self, generation: u64, failure: &CallFailure, message: &str) {
        if failure.peer_left {
            self.mark_left();
        } else if failure.link_broken {
            self.fail(Some(generation), message);
        }
    }

    /// The peer made an authenticated call to this node, so it runs and listens: the next
    /// call dials it at once instead of failing until the backoff runs out. The failure
    /// count stays, so a peer that calls in but cannot be dialed still backs off longer
    /// after each attempt (one attempt at a time, each bounded by the connect timeout).
    pub(crate) fn heard_from(&self) {
        let mut state = self.state();
        if state.channel.is_none() {
            state.retry_at = None;
        }
    }

    /// A call on the channel of `generation` succeeded.
    pub(crate) fn succeeded(&self, generation: u64) {
        let mut state = self.state();
        if matches!(&state.channel, Some((_, current)) if *current == generation) {
            state.phase = self.up_phase(state.phase);
        }
    }

    /// The peer said it is leaving: its connection closes, and calls fail with
    /// [`NetError::Left`] until a new connection to it succeeds.
    pub(crate) fn mark_left(&self) {
        let mut state = self.state();
        state.channel = None;
        if state.phase != PeerState::Local {
            state.phase = PeerState::Left;
        }
        state.failures = 0;
        state.retry_at = None;
        state.last_error = "it left the cluster".to_owned();
    }
}

/// An error and its sources, one line (tonic's transport errors put the useful part,
/// "connection refused", in a source).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::new(
            1,
            "127.0.0.1:1".to_owned(),
            false,
            Duration::from_secs(1),
            (Duration::from_millis(50), Duration::from_millis(300)),
            None,
            None,
        )
        .unwrap()
    }

    fn backoff_after(link: &Link) -> Duration {
        let retry_at = link.state().retry_at.unwrap();
        retry_at.saturating_duration_since(Instant::now())
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_fails_calls_fast_meanwhile() {
        let link = link();
        assert_eq!(link.phase(), PeerState::Connecting);
        let mut waits = Vec::new();
        for _ in 0..40 {
            link.fail(None, "connection refused");
            waits.push(backoff_after(&link));
        }
        assert_eq!(link.phase(), PeerState::Down);
        assert!(waits[0] <= Duration::from_millis(50));
        assert!(waits[1] > Duration::from_millis(50) && waits[1] <= Duration::from_millis(100));
        assert!(waits[2] > Duration::from_millis(100) && waits[2] <= Duration::from_millis(200));
        assert!(waits[3..]
            .iter()
            .all(|wait| *wait <= Duration::from_millis(300)));
        assert!(waits[39] > Duration::from_millis(200), "{:?}", waits[39]);
        match link.ready_channel() {
            Err(NetError::Unreachable { node: 1, reason }) => {
                assert!(
                    reason.starts_with("connection refused; next connection attempt in"),
                    "{reason}"
                )
            }
            other => panic!("expected a fast failure, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_failure_keeps_a_newer_channel() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _context = runtime.enter();
        let link = link();
        {
            let mut state = link.state();
            state.channel = Some((link.endpoint.connect_lazy(), 3));
            state.phase = PeerState::Up;
        }
        // A call on generation 2 fails after the link reconnected as generation 3.
        assert!(!link.fail(Some(2), "reset"));
        assert_eq!(link.phase(), PeerState::Up);
        assert!(link.state().channel.is_some());
        // A failure of the current generation drops it.
        assert!(!link.fail(Some(3), "reset"));
        assert_eq!(link.phase(), PeerState::Down);
        assert!(link.state().channel.is_none());
    }

    #[test]
    fn a_peer_that_left_fails_calls_with_left_until_it_is_back() {
        let link = link();
        link.mark_left();
        assert_eq!(link.phase(), PeerState::Left);
        assert!(link.fail(None, "connection refused"));
        assert_eq!(link.phase(), PeerState::Left);
        assert!(matches!(
            link.ready_channel(),
            Err(NetError::Left { node: 1 })
        ));
    }

    #[test]
    fn a_call_from_the_peer_ends_the_backoff() {
        let link = link();
        link.fail(None, "connection refused");
        assert!(link.ready_channel().is_err());
        link.heard_from();
        assert!(matches!(link.ready_channel(), Ok(None)), "may dial now");
        // The next failure backs off longer than the first: the count was kept.
        link.fail(None, "connection refused");
        assert!(backoff_after(&link) > Duration::from_millis(50));
    }
}
