//! `chimaera monitor`: a live terminal view of the running runtime (ratatui on crossterm).
//!
//! Every second it asks the runtime for its admin `Status` (the same snapshot as
//! `runtime status --json`, which leaves the monitor's own query out) and redraws:
//! the runtime's totals and tasks/s, shared memory, the pools, every lane with its queue
//! depth and worker, and every method that ran with its tasks/s (from the change in its
//! completed and failed counts since the last refresh), p50 and p99 latency. `q`, `Esc`
//! or Ctrl-C quit; the terminal is restored on every exit path (ratatui's init installs a
//! panic hook that restores it too). If the runtime stops, the monitor exits saying so.
use super::status::{fetch, for_display, human_bytes, human_ns};
use super::{Context, FAILED};
use chimaera_core::admin_api::{NodeStatus, RuntimeStatus};
use chimaera_core::peer::PeerState;
use chimaera_core::{MethodId, PoolId};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// Two successive snapshots, for rates.
struct View {
    status: RuntimeStatus,
    /// Tasks/s of the whole runtime since the previous snapshot.
    rate: f64,
    /// Tasks/s per (pool, method) since the previous snapshot.
    method_rates: HashMap<(PoolId, MethodId), f64>,
}

impl View {
    fn new(status: RuntimeStatus, previous: Option<(&RuntimeStatus, Duration)>) -> View {
        let mut method_rates = HashMap::new();
        let mut rate = 0.0;
        if let Some((before, elapsed)) = previous {
            let seconds = elapsed.as_secs_f64().max(1e-3);
            rate = status.completed.saturating_sub(before.completed) as f64 / seconds;
            let done_before: HashMap<_, _> = before
                .methods
                .iter()
                .map(|m| ((m.pool, m.method), m.completed + m.failed))
                .collect();
            for method in &status.methods {
                let key = (method.pool, method.method);
                let before = done_before.get(&key).copied().unwrap_or(0);
                let done = (method.completed + method.failed).saturating_sub(before);
                method_rates.insert(key, done as f64 / seconds);
            }
        }
        View {
            status: for_display(status),
            rate,
            method_rates,
        }
    }
}

/// `monitor`.
pub(super) fn run(context: &Context) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Fails before the screen is taken over when no runtime runs.
    let first = match fetch(context, &config) {
        Ok(status) => status,
        Err(code) => return code,
    };
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(err) => {
            return context.fail(
                FAILED,
                format!(
                    "`monitor` needs a terminal: {err}; use `runtime status --json` in scripts"
                ),
            )
        }
    };
    let name = context.binary().name().to_owned();
    let mut view = View::new(first, None);
    let mut taken = Instant::now();
    let outcome = loop {
        if let Err(err) = terminal.draw(|frame| draw(frame, &name, &view)) {
            break Err(format!("cannot draw: {err}"));
        }
        let next = taken + REFRESH;
        let quit = loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            match event::poll(left) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                        let ctrl_c = key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL);
                        if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                            break true;
                        }
                    }
                    Ok(Event::Resize(..)) => {
                        let _ = terminal.draw(|frame| draw(frame, &name, &view));
                    }
                    Ok(_) => {}
                    Err(err) => return restore_and_fail(context, format!("terminal input: {err}")),
                },
                Ok(false) => break false,
                Err(err) => return restore_and_fail(context, format!("terminal input: {err}")),
            }
        };
        if quit {
            break Ok(());
        }
        let now = Instant::now();
        let status = match fetch(context, &config) {
            Ok(status) => status,
            Err(_) => break Err(format!("runtime `{}` stopped answering", config.instance)),
        };
        view = View::new(status, Some((&view.status, now - taken)));
        taken = now;
    };
    ratatui::restore();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => context.fail(FAILED, message),
    }
}

fn restore_and_fail(context: &Context, message: String) -> ExitCode {
    ratatui::restore();
    context.fail(FAILED, message)
}

/// One line on the cluster (`cluster: node 1 of 4; up 2, down 1`, the states in a fixed
/// order), or `None` for a single node.
fn cluster_summary(this_node: u32, nodes: &[NodeStatus]) -> Option<String> {
    if nodes.is_empty() {
        return None;
    }
    let states = [
        PeerState::Up,
        PeerState::Connecting,
        PeerState::Down,
        PeerState::Left,
    ]
    .iter()
    .filter_map(|state| {
        let count = nodes.iter().filter(|node| node.state == *state).count();
        (count > 0).then(|| format!("{state} {count}"))
    })
    .collect::<Vec<_>>();
    let peers = if states.is_empty() {
        "no other node".to_owned()
    } else {
        states.join(", ")
    };
    Some(format!(
        "cluster: node {this_node} of {}; {peers}",
        nodes.len()
    ))
}

/// Draws `view`, whose names were made [`shown`](super::status::shown) when it was taken.
fn draw(frame: &mut Frame, binary: &str, view: &View) {
    let status = &view.status;
    let lanes: usize = status.containers.iter().map(|c| c.lanes.len()).sum();
    let methods_run = status
        .methods
        .iter()
        .filter(|m| m.latency.count + m.in_flight > 0)
        .count();
    let cluster_line = cluster_summary(status.node, &status.nodes);
    let [header, pools_area, lanes_area, methods_area] = Layout::vertical([
        Constraint::Length(5 + u16::from(cluster_line.is_some())),
        Constraint::Length(status.pools.len().min(10) as u16 + 3),
        Constraint::Length(lanes.min(12) as u16 + 3),
        Constraint::Min(methods_run.min(20) as u16 + 3),
    ])
    .areas(frame.area());

    let shm = &status.shm;
    let mut summary = vec![
        Line::from(format!(
            "runtime `{}` (pid {}), {} worker(s), {} client(s) attached",
            status.instance,
            status.pid,
            status.workers.len(),
            status.clients
        )),
        Line::from(format!(
            "tasks/s: {:.0}   in flight: {}   completed: {}   periodic: {}",
            view.rate, status.inflight, status.completed, status.periodic
        )),
        Line::from(format!(
            "shm: {} client area(s) of {} in use ({}), up to {} clients; outputs waiting {}",
            shm.client_areas_in_use,
            human_bytes(shm.per_client_bytes),
            human_bytes(shm.committed_bytes),
            shm.max_clients,
            human_bytes(shm.output_bytes_in_use)
        )),
    ];
    summary.extend(cluster_line.map(Line::from));
    frame.render_widget(
        Paragraph::new(summary)
            .block(Block::bordered().title(format!(" {binary} monitor (refresh 1 s, q quits) "))),
        header,
    );

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let pools = Table::new(
        status.pools.iter().map(|pool| {
            Row::new(vec![
                pool.id.to_string(),
                pool.name.clone(),
                pool.module.clone(),
                pool.containers.to_string(),
                pool.queued.to_string(),
            ])
        }),
        [
            Constraint::Length(8),
            Constraint::Fill(2),
            Constraint::Fill(1),
            Constraint::Length(10),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(["id", "pool", "module", "containers", "queued"]).style(bold))
    .block(Block::bordered().title(" pools "));
    frame.render_widget(pools, pools_area);

    let name_of = |pool: PoolId| {
        status
            .pools
            .iter()
            .find(|p| p.id == pool)
            .map_or_else(|| pool.to_string(), |p| p.name.clone())
    };
    let lane_rows = status.containers.iter().flat_map(|container| {
        let pool = name_of(container.pool);
        container.lanes.iter().enumerate().map(move |(id, lane)| {
            Row::new(vec![
                pool.clone(),
                container.container.to_string(),
                id.to_string(),
                lane.worker.to_string(),
                if lane.high_latency { "high" } else { "low" }.to_owned(),
                lane.queued.to_string(),
            ])
        })
    });
    let lanes = Table::new(
        lane_rows,
        [
            Constraint::Fill(2),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(["pool", "container", "lane", "worker", "latency", "queued"]).style(bold))
    .block(Block::bordered().title(" lanes (queue depth) "));
    frame.render_widget(lanes, lanes_area);

    let method_rows = status
        .methods
        .iter()
        .filter(|m| m.latency.count + m.in_flight > 0)
        .map(|method| {
            let rate = view
                .method_rates
                .get(&(method.pool, method.method))
                .copied()
                .unwrap_or(0.0);
            Row::new(vec![
                name_of(method.pool),
                method.name.clone(),
                format!("{rate:.0}"),
                method.completed.to_string(),
                method.failed.to_string(),
                method.in_flight.to_string(),
                human_ns(method.latency.p50_ns),
                human_ns(method.latency.p99_ns),
            ])
        });
    let methods = Table::new(
        method_rows,
        [
            Constraint::Fill(2),
            Constraint::Fill(2),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "pool", "method", "tasks/s", "done", "failed", "running", "p50", "p99",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" methods that ran "));
    frame.render_widget(methods, methods_area);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node: u32, state: PeerState) -> NodeStatus {
        NodeStatus {
            node,
            address: format!("10.0.0.{node}:9513"),
            state,
        }
    }

    #[test]
    fn the_cluster_line_counts_the_other_nodes_by_state() {
        assert_eq!(cluster_summary(0, &[]), None);
        assert_eq!(
            cluster_summary(0, &[node(0, PeerState::Local)]).as_deref(),
            Some("cluster: node 0 of 1; no other node")
        );
        let nodes = [
            node(0, PeerState::Down),
            node(1, PeerState::Local),
            node(2, PeerState::Up),
            node(3, PeerState::Up),
            node(4, PeerState::Left),
        ];
        assert_eq!(
            cluster_summary(1, &nodes).as_deref(),
            Some("cluster: node 1 of 5; up 2, down 1, left 1")
        );
    }
}
