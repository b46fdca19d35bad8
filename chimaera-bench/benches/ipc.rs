//! Inter-process benchmark: client processes ↔ a `chimaera runtime start` process, next to
//! iceoryx2 and a raw cache-line ping-pong measured in the same run on the same machine.
//!
//! * (a) sync round trip of an empty MOD_NAME `custom` task (`custom(local, "", i)`), this
//!   process as the client, the runtime a child process: warm-up, then 31 samples of
//!   20,000 calls, median ns per call;
//! * (b) the same round trip over iceoryx2 request-response (8-byte `u64` request and
//!   response) to a child process that answers; both sides busy-poll, as iceoryx2's own
//!   benchmarks do; 31 samples of 20,000 round trips, median;
//! * (c) the physical floor: this process and a child ping-pong one `AtomicU64` in a
//!   `/dev/shm` mapping, both spinning; 31 samples of 100,000 round trips, median;
//! * (d) pipelined throughput: 1, 2 and 4 client processes at once, each keeping a window
//!   of 255 async `custom` tasks in flight (waiting in order) for 1 s; the sum of their
//!   rates. Measured in 5 rounds, each of the three counts once per round (in an order
//!   that turns with the round), so that a change in the machine's state hits them alike:
//!   the medians are reported, and the median of the per-round ratios of 4 clients to 1
//!   (`tps_ratio_4_1`) says whether more clients cost throughput;
//! * (e) the runtime's CPU use over 5 s with no traffic (this process still connected), as
//!   % of one core: the runtime's threads' on-CPU time from `/proc/<pid>/task/*/schedstat`
//!   (ns resolution; `utime+stime` of `/proc/<pid>/stat` ticks at 10 ms, i.e. 0.2% of 5 s,
//!   so it is printed alongside as a cross-check only).
//!
//! Run: `cargo bench --manifest-path chimaera-bench/Cargo.toml --bench ipc`. The last
//! line is `ipc: rtt_median_ns=<n> iceoryx2_rtt_median_ns=<n> floor_rtt_ns=<n> ratio=<ours/iceoryx2>
//! floor_ratio=<ours/floor> tasks_per_s_1=<n> tasks_per_s_4=<n> tps_ratio_4_1=<r> idle_cpu_pct=<n>`
//! (one line),
//! followed by `plot: <target dir>/bench-plots/ipc.svg`: the distributions of the three
//! round trips' samples beside throughput against client processes.
//!
//! # Processes
//!
//! The bench executable plays every part: run with `CHI_BENCH_ROLE` set it becomes a
//! child (`iox-server`, `floor-echo`, `tput-client`); without it, the coordinator. Children
//! get `PR_SET_PDEATHSIG` and also poll their parent's pid, so none outlives the
//! coordinator; the coordinator holds each child in a guard that kills and reaps it on
//! drop (panic or early error included). The runtime is `CARGO_BIN_EXE_chimaera` (this
//! crate's `chimaera` binary, built by `cargo bench` with the bench profile), serving a fresh instance `ipcbench-<pid>`; it is
//! stopped with `chimaera runtime stop` and must exit 0.
//!
//! (a), (b) and (c) are sampled in turn, one sample of each per round, so that a change in
//! the machine's state during the run hits all three alike (the median of the per-round
//! ratios is printed as a cross-check); between its samples a peer child blocks on its
//! stdin (no CPU) until the coordinator writes `go`.
//!
//! # Files
//!
//! iceoryx2 runs with a config of its own: file prefix `iox2_chibench<pid>_` in `/dev/shm`
//! and root directory `/tmp/chimaera-ipcbench-<pid>-iceoryx2`, not the shared defaults.
//! At the end the coordinator fails if any file of the runtime instance, of the floor
//! mapping or of iceoryx2 is left, except the one iceoryx2 keeps by design (its global
//! management segment, `…global_mgmt`), which it removes along with the directory. On an
//! early error the same files are removed by drop guards; what a killed coordinator left
//! (no guard ran) is removed by the next run, for pids that no longer exist.
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera_bench::child::{
    self, check_parent, die_with_parent, say, wait_for_go, wait_timeout, ChildProc, PATIENCE,
};
use chimaera_bench::{sync_sample, Distribution, Percentiles};
use iceoryx2::prelude::*;
use std::collections::VecDeque;
use std::error::Error;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

/// `floor-echo`: the path of the mapping; `iox-server`: the service name.
const TARGET_ENV: &str = "CHI_IPC_BENCH_TARGET";

const SAMPLES: usize = 31;
const RTT_CALLS: u32 = 20_000;
const IOX_CALLS: u64 = 20_000;
const FLOOR_ROUNDS: u64 = 100_000;
/// Tasks each client keeps in flight: one less than the default `queue_depth` (256),
/// because a connection keeps one slot to carry abandon requests (see the client
/// transport's docs); a window of 256 would wait for that slot on every submission.
const WINDOW: usize = 255;
const TPUT_SECS: f64 = 1.0;
/// Rounds of (d); in each, every client count of `TPUT_CLIENTS` is measured once.
const TPUT_ROUNDS: usize = 5;
const TPUT_CLIENTS: [usize; 3] = [1, 2, 4];
const IDLE: Duration = Duration::from_secs(5);
/// Request (b) or cell value (c) that ends a sample: the peer answers it (with
/// `PAUSE + 1`, i.e. 0) and blocks on its stdin until the next sample.
const PAUSE: u64 = u64::MAX;
/// Untimed round trips at the start of each sample, after the peer woke up.
const WARM: u64 = 2_000;
/// Pause before each sample, so a peer that spins a while after its traffic stops (our
/// runtime's workers, before they sleep) is quiet when the next one is timed.
const GAP: Duration = Duration::from_millis(10);

fn main() -> Res<()> {
    match child::role().as_deref() {
        Some("iox-server") => iox_server(),
        Some("floor-echo") => floor_echo(),
        Some("tput-client") => tput_client(),
        Some(other) => Err(format!("unknown {}={other}", child::ROLE_ENV).into()),
        None => coordinator(),
    }
}

// ---------------------------------------------------------------------------------------
// coordinator

fn coordinator() -> Res<()> {
    let pid = std::process::id();
    let instance = format!("ipcbench-{pid}");
    let floor_path = PathBuf::from(format!("/dev/shm/chimaera-ipcbench-{pid}-floor"));
    let iox_files = IoxFiles::for_pid(pid, true);
    remove_stale_runs();

    let mut floor = FloorPeer::start(&floor_path)?;
    let mut iox = IoxPeer::start(&iox_files, &format!("chimaera-ipcbench-{pid}"))?;

    let runtime = RuntimeProcess::start(&instance)?;
    // The runtime runs on built-in defaults (no `CHI_SERVER_CONF`), serving `instance`;
    // this process and the client children find it through the same environment.
    // SAFETY: no thread of ours reads the environment concurrently: the only other threads
    // alive are child-stdout readers, which never touch it.
    unsafe {
        std::env::remove_var("CHI_SERVER_CONF");
        std::env::set_var("CHI_INSTANCE", &instance);
    }
    let chi = connect_with_patience(&runtime)?;
    let m = ModNameClient::create(&chi, PoolQuery::local(), "bench", CreateParams::default())?;

    // (a), (b), (c): one sample of each per round, so that a change of the machine's state
    // during the run (this is a VM with 2 vCPUs) hits all three alike.
    for i in 0..50_000 {
        m.custom(PoolQuery::local(), "", i)?;
    }
    floor.sample(FLOOR_ROUNDS)?;
    iox.sample(IOX_CALLS)?;
    let (mut ours_ns, mut iox_ns, mut floor_ns) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        std::thread::sleep(GAP);
        floor_ns.push(floor.sample(FLOOR_ROUNDS)?);
        std::thread::sleep(GAP);
        iox_ns.push(iox.sample(IOX_CALLS)?);
        std::thread::sleep(GAP);
        ours_ns.push(sync_sample(&m, WARM as u32, RTT_CALLS)?);
    }
    floor.finish()?;
    iox.finish()?;
    let per_round = |peer: &[f64]| -> f64 {
        Percentiles::median_of(
            &ours_ns
                .iter()
                .zip(peer)
                .map(|(a, b)| a / b)
                .collect::<Vec<_>>(),
        )
    };
    let (round_ratio, round_floor_ratio) = (per_round(&iox_ns), per_round(&floor_ns));
    let samples = (ours_ns.clone(), iox_ns.clone(), floor_ns.clone());
    let Percentiles {
        p10: floor_p10,
        median: floor_ns,
        p90: floor_p90,
    } = Percentiles::of(&floor_ns);
    println!(
        "(c) floor, cache-line ping-pong: median {floor_ns:.0} ns per round trip \
         (p10 {floor_p10:.0}, p90 {floor_p90:.0})"
    );
    let Percentiles {
        p10: iox_p10,
        median: iox_ns,
        p90: iox_p90,
    } = Percentiles::of(&iox_ns);
    println!(
        "(b) iceoryx2 request-response: median {iox_ns:.0} ns per round trip \
         (p10 {iox_p10:.0}, p90 {iox_p90:.0})"
    );
    let Percentiles {
        p10: rtt_p10,
        median: rtt_ns,
        p90: rtt_p90,
    } = Percentiles::of(&ours_ns);
    println!(
        "(a) ours, sync empty task: median {rtt_ns:.0} ns per round trip \
         (p10 {rtt_p10:.0}, p90 {rtt_p90:.0})"
    );

    println!(
        "    cross-check, median of the 31 per-round ratios: ours/iceoryx2 {round_ratio:.2}, \
         ours/floor {round_floor_ratio:.2}"
    );

    let rates = throughput_rounds(&instance)?;
    // Positions in `TPUT_CLIENTS` (1, 2 and 4 clients).
    let [tps_1, tps_2, tps_4] = [0, 1, 2].map(|at| {
        let per_round: Vec<f64> = rates.iter().map(|round| round[at]).collect();
        Percentiles::median_of(&per_round)
    });
    for (clients, tps) in TPUT_CLIENTS.iter().zip([tps_1, tps_2, tps_4]) {
        println!(
            "(d) ours, pipelined (window {WINDOW}), {clients} client process(es): \
             median {tps:.0} tasks/s over {TPUT_ROUNDS} rounds"
        );
    }
    let tps_ratio_4_1 = Percentiles::median_of(
        &rates
            .iter()
            .map(|round| round[2] / round[0])
            .collect::<Vec<_>>(),
    );
    println!(
        "    per-round rates (1, 2, 4 clients): {}; median of the per-round ratios \
         4 clients / 1: {tps_ratio_4_1:.2}",
        rates
            .iter()
            .map(|round| format!(
                "{} M",
                round.map(|rate| format!("{:.2}", rate / 1e6)).join("/")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let (idle_pct, idle_tick_pct) = idle_cpu(runtime.pid(), &m)?;
    println!(
        "(e) runtime idle CPU over {}s, a client connected: {idle_pct:.3}% of a core \
         (thread schedstat; utime+stime ticks say {idle_tick_pct:.1}%)",
        IDLE.as_secs()
    );

    drop(m);
    drop(chi);
    runtime.stop()?;

    check_residue(&instance, &floor_path, &iox_files)?;

    println!(
        "ipc: rtt_median_ns={rtt_ns:.0} iceoryx2_rtt_median_ns={iox_ns:.0} floor_rtt_ns={floor_ns:.0} \
         ratio={:.2} floor_ratio={:.2} tasks_per_s_1={tps_1:.0} tasks_per_s_4={tps_4:.0} \
         tps_ratio_4_1={tps_ratio_4_1:.2} idle_cpu_pct={idle_pct:.3}",
        rtt_ns / iox_ns,
        rtt_ns / floor_ns,
    );
    let (ours_ns, iox_ns, floor_ns) = samples;
    let plot = chimaera_bench::latency_and_throughput_svg(
        "ipc",
        "sync round trip between processes",
        "31 samples each, sampled in turn",
        &[
            Distribution {
                label: "chimaera empty task",
                samples_ns: &ours_ns,
            },
            Distribution {
                label: "iceoryx2 request-response",
                samples_ns: &iox_ns,
            },
            Distribution {
                label: "cache-line ping-pong (floor)",
                samples_ns: &floor_ns,
            },
        ],
        &[(1, tps_1), (2, tps_2), (4, tps_4)],
    )?;
    println!("plot: {}", plot.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (a) our sync round trip

fn connect_with_patience(runtime: &RuntimeProcess) -> Res<Client> {
    let start = Instant::now();
    loop {
        match Client::connect() {
            Ok(chi) => return Ok(chi),
            Err(e) if start.elapsed() > PATIENCE => {
                return Err(
                    format!("the runtime did not accept a client within {PATIENCE:?}: {e}").into(),
                )
            }
            Err(_) => {
                runtime.check_alive()?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// (d) pipelined throughput from client processes

/// (d) in rounds: the rates of 1, 2 and 4 clients (in `TPUT_CLIENTS` order) per round,
/// each round starting at the next count, so none is always measured first.
fn throughput_rounds(instance: &str) -> Res<Vec<[f64; 3]>> {
    let mut rounds = Vec::with_capacity(TPUT_ROUNDS);
    for round in 0..TPUT_ROUNDS {
        let mut rates = [0.0; 3];
        for turn in 0..TPUT_CLIENTS.len() {
            let at = (round + turn) % TPUT_CLIENTS.len();
            rates[at] = throughput(instance, TPUT_CLIENTS[at])?;
        }
        rounds.push(rates);
    }
    Ok(rounds)
}

fn throughput(instance: &str, clients: usize) -> Res<f64> {
    let mut children = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut cmd = child::command("tput-client")?;
        cmd.env("CHI_INSTANCE", instance);
        children.push(ChildProc::spawn(cmd, "tput-client")?);
    }
    for child in &mut children {
        child.expect_line("ready")?;
    }
    for child in &mut children {
        child.send_line("go")?;
    }
    let mut total = 0.0;
    for child in &mut children {
        let line = child.expect_line("done")?;
        let mut words = line.split_whitespace().skip(1);
        let (Some(tasks), Some(secs)) = (words.next(), words.next()) else {
            return Err(format!("tput-client said `{line}`").into());
        };
        total += tasks.parse::<f64>()? / secs.parse::<f64>()?;
    }
    for child in children {
        child.finish()?;
    }
    Ok(total)
}

/// Child: connect, open the pool, warm up, say `ready`; on `go`, keep `WINDOW` async tasks
/// in flight for `TPUT_SECS`, then say `done <tasks> <seconds>`.
fn tput_client() -> Res<()> {
    die_with_parent()?;
    let chi = Client::connect()?;
    let m = ModNameClient::create(&chi, PoolQuery::local(), "bench", CreateParams::default())?;
    pipeline(&m, Some(20_000), None)?;
    say("ready")?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "go" {
        return Err(format!("tput-client expected `go`, got `{}`", line.trim()).into());
    }
    let start = Instant::now();
    let done = pipeline(&m, None, Some(start + Duration::from_secs_f64(TPUT_SECS)))?;
    let secs = start.elapsed().as_secs_f64();
    say(&format!("done {done} {secs}"))?;
    Ok(())
}

/// Submits async `custom` tasks with `WINDOW` in flight, waiting in order, until `count`
/// were submitted or `until` passed; returns how many completed.
fn pipeline(m: &ModNameClient, count: Option<u64>, until: Option<Instant>) -> Res<u64> {
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let mut submitted = 0u64;
    loop {
        if count.is_some_and(|n| submitted >= n) {
            break;
        }
        if submitted.is_multiple_of(WINDOW as u64) && until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        if in_flight.len() == WINDOW {
            if let Some(p) = in_flight.pop_front() {
                let _: String = Pending::wait(p)?;
            }
        }
        in_flight.push_back(m.async_custom(PoolQuery::local(), "", submitted as u32)?);
        submitted += 1;
    }
    for p in in_flight {
        p.wait()?;
    }
    Ok(submitted)
}

// ---------------------------------------------------------------------------------------
// (e) idle CPU of the runtime

/// On-CPU time of all of `pid`'s threads (ns, from schedstat) and its utime+stime (ticks).
fn cpu_time(pid: u32) -> Res<(u64, u64)> {
    let mut ns = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .ok_or("empty schedstat")?
                .parse::<u64>()?;
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').ok_or("bad /proc/pid/stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok((ns, ticks))
}

fn idle_cpu(pid: u32, m: &ModNameClient) -> Res<(f64, f64)> {
    // Let the workers finish spinning and go to sleep after the last traffic.
    std::thread::sleep(Duration::from_millis(500));
    let (ns0, ticks0) = cpu_time(pid)?;
    let start = Instant::now();
    std::thread::sleep(IDLE);
    let (ns1, ticks1) = cpu_time(pid)?;
    let wall = start.elapsed().as_secs_f64();
    // The client is still connected and working: one more call must succeed.
    m.custom(PoolQuery::local(), "", 0)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let pct = (ns1 - ns0) as f64 / 1e9 / wall * 100.0;
    let tick_pct = (ticks1 - ticks0) as f64 / hz / wall * 100.0;
    Ok((pct, tick_pct))
}

// ---------------------------------------------------------------------------------------
// (b) iceoryx2 request-response

/// Where this run's iceoryx2 files go: `/dev/shm/{prefix}…` and the directory `root`,
/// both unique to the coordinator's pid, so the run can prove it left nothing behind and
/// remove what iceoryx2 keeps by design (its per-prefix global management segment and
/// the empty `nodes`/`services` directories). Only the coordinator's (the `owner`)
/// removes them on drop.
struct IoxFiles {
    prefix: String,
    root: PathBuf,
    owner: bool,
}

impl IoxFiles {
    fn for_pid(pid: u32, owner: bool) -> Self {
        IoxFiles {
            prefix: format!("iox2_chibench{pid}_"),
            root: PathBuf::from(format!("/tmp/chimaera-ipcbench-{pid}-iceoryx2")),
            owner,
        }
    }

    /// In the `iox-server` child: the coordinator's files, not removed on drop.
    fn from_env() -> Res<Self> {
        Ok(Self::for_pid(child::parent_pid()?, false))
    }

    fn node(&self) -> Res<Node<ipc::Service>> {
        set_log_level(LogLevel::Error);
        let mut config = Config::default();
        config.global.prefix = FileName::new(self.prefix.as_bytes())?;
        let root = self.root.to_str().ok_or("non-UTF-8 path")?;
        config
            .global
            .set_root_path(&iceoryx2::prelude::Path::new(root.as_bytes())?);
        Ok(NodeBuilder::new()
            .config(&config)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()?)
    }

    /// Files iceoryx2 left: in `/dev/shm` with our prefix, and any file under `root`.
    fn left(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&self.prefix)
                {
                    files.push(entry.path());
                }
            }
        }
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                } else {
                    files.push(entry.path());
                }
            }
        }
        files
    }

    /// Removes everything `left` lists, and `root`.
    fn remove(&self) {
        for file in self.left() {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for IoxFiles {
    fn drop(&mut self) {
        if self.owner {
            self.remove();
        }
    }
}

type IoxService =
    iceoryx2::service::port_factory::request_response::PortFactory<ipc::Service, u64, (), u64, ()>;
type IoxClient = iceoryx2::port::client::Client<ipc::Service, u64, (), u64, ()>;

/// The coordinator's side of (b): an iceoryx2 client and the `iox-server` child.
struct IoxPeer {
    client: IoxClient,
    service: IoxService,
    node: Node<ipc::Service>,
    server: ChildProc,
}

impl IoxPeer {
    fn start(files: &IoxFiles, service_name: &str) -> Res<Self> {
        let mut cmd = child::command("iox-server")?;
        cmd.env(TARGET_ENV, service_name);
        let mut server = ChildProc::spawn(cmd, "iox-server")?;
        server.expect_line("ready")?;
        let node = files.node()?;
        let service = node
            .service_builder(&ServiceName::new(service_name)?)
            .request_response::<u64, u64>()
            .open()?;
        let client = service.client_builder().create()?;
        Ok(IoxPeer {
            client,
            service,
            node,
            server,
        })
    }

    fn round_trip(&self, value: u64) -> Res<u64> {
        let pending = self.client.send_copy(value)?;
        let mut spins = 0u32;
        let mut start = None;
        loop {
            if let Some(response) = pending.receive()? {
                return Ok(*response);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 20)
                && start.get_or_insert_with(Instant::now).elapsed() > PATIENCE
            {
                return Err("the iceoryx2 server stopped answering".into());
            }
        }
    }

    /// Wakes the server, times `calls` round trips after `WARM` more, lets it sleep again.
    fn sample(&mut self, calls: u64) -> Res<f64> {
        self.server.send_line("go")?;
        for i in 0..WARM {
            if self.round_trip(i)? != i + 1 {
                return Err("the iceoryx2 server answered wrong".into());
            }
        }
        let start = Instant::now();
        for i in 0..calls {
            self.round_trip(i)?;
        }
        let ns = start.elapsed().as_nanos() as f64 / calls as f64;
        self.round_trip(PAUSE)?;
        Ok(ns)
    }

    /// Drops our ports and node, then lets the server drop its own and exit.
    fn finish(self) -> Res<()> {
        let IoxPeer {
            client,
            service,
            node,
            server,
        } = self;
        drop(client);
        drop(service);
        drop(node);
        server.finish()
    }
}

/// Child: create the request-response service named by `TARGET_ENV` and a server, say
/// `ready`; then on each `go` line answer requests `v` with `v + 1`, busy-polling, until a
/// `PAUSE` request; exit when stdin closes.
fn iox_server() -> Res<()> {
    die_with_parent()?;
    let name = std::env::var(TARGET_ENV)?;
    let files = IoxFiles::from_env()?;
    let node = files.node()?;
    let service = node
        .service_builder(&ServiceName::new(&name)?)
        .request_response::<u64, u64>()
        .create()?;
    let server = service.server_builder().create()?;
    say("ready")?;
    while wait_for_go()? {
        let mut idle = 0u32;
        loop {
            let Some(request) = server.receive()? else {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(1 << 20) {
                    check_parent()?;
                }
                continue;
            };
            let value = *request;
            request.send_copy(value.wrapping_add(1))?;
            if value == PAUSE {
                break;
            }
        }
    }
    drop(server);
    drop(service);
    drop(node);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (c) the cache-line floor

/// A `/dev/shm` file removed on drop.
struct ShmFile(PathBuf);

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Maps `path` (one page) and returns the mapping; its first 8 bytes are the cell.
fn map_cell(path: &Path, create: bool) -> Res<memmap2::MmapMut> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .open(path)?;
    if create {
        file.set_len(4096)?;
    }
    // SAFETY: the file is ours (created 0600 under a per-pid name) and only this bench's
    // two processes map it; they access it solely through the atomic in `cell`.
    Ok(unsafe { memmap2::MmapMut::map_mut(&file)? })
}

fn cell(map: &memmap2::MmapMut) -> &AtomicU64 {
    // SAFETY: the mapping is page-aligned, at least 8 bytes long and lives as long as the
    // returned reference; every access to these bytes, in both processes, is atomic.
    unsafe { &*map.as_ptr().cast::<AtomicU64>() }
}

/// Spins until `cell` holds `want`; gives up after `PATIENCE`.
fn spin_for(cell: &AtomicU64, want: u64) -> Res<()> {
    let mut spins = 0u32;
    let mut start = None;
    while cell.load(Ordering::Acquire) != want {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 20)
            && start.get_or_insert_with(Instant::now).elapsed() > PATIENCE
        {
            return Err("the floor peer stopped answering".into());
        }
    }
    Ok(())
}

/// The coordinator's side of (c): the mapping and the `floor-echo` child.
struct FloorPeer {
    map: memmap2::MmapMut,
    _file: ShmFile,
    echo: ChildProc,
    /// The next odd value to write.
    next: u64,
}

impl FloorPeer {
    fn start(path: &Path) -> Res<Self> {
        let map = map_cell(path, true)?;
        let file = ShmFile(path.to_owned());
        let mut cmd = child::command("floor-echo")?;
        cmd.env(TARGET_ENV, path);
        let mut echo = ChildProc::spawn(cmd, "floor-echo")?;
        echo.expect_line("ready")?;
        Ok(FloorPeer {
            map,
            _file: file,
            echo,
            next: 1,
        })
    }

    /// Wakes the echo, times `rounds` round trips after `WARM` more, lets it sleep again.
    fn sample(&mut self, rounds: u64) -> Res<f64> {
        self.echo.send_line("go")?;
        let cell = cell(&self.map);
        let mut value = self.next;
        for _ in 0..WARM {
            cell.store(value, Ordering::Release);
            spin_for(cell, value + 1)?;
            value += 2;
        }
        let start = Instant::now();
        for _ in 0..rounds {
            cell.store(value, Ordering::Release);
            spin_for(cell, value + 1)?;
            value += 2;
        }
        let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        self.next = value;
        cell.store(PAUSE, Ordering::Release);
        spin_for(cell, PAUSE.wrapping_add(1))?;
        Ok(ns)
    }

    fn finish(self) -> Res<()> {
        self.echo.finish()
    }
}

/// Child: on each `go` line, answer every odd value in the cell with the next one
/// (`PAUSE` wraps to 0 and ends the round); exit when stdin closes.
fn floor_echo() -> Res<()> {
    die_with_parent()?;
    let map = map_cell(Path::new(&std::env::var(TARGET_ENV)?), false)?;
    let cell = cell(&map);
    say("ready")?;
    while wait_for_go()? {
        let mut idle = 0u32;
        loop {
            let value = cell.load(Ordering::Acquire);
            if value % 2 == 1 {
                cell.store(value.wrapping_add(1), Ordering::Release);
                if value == PAUSE {
                    break;
                }
            } else {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(1 << 24) {
                    check_parent()?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// processes

/// The `chimaera runtime start` child serving `instance`; see its `Drop` for an early exit.
struct RuntimeProcess {
    instance: String,
    child: Option<Child>,
}

const RUNTIME_BIN: &str = env!("CARGO_BIN_EXE_chimaera");

impl RuntimeProcess {
    fn start(instance: &str) -> Res<Self> {
        let mut cmd = Command::new(RUNTIME_BIN);
        cmd.args(["runtime", "start"])
            .env("CHI_INSTANCE", instance)
            .env_remove("CHI_SERVER_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Its per-client INFO lines would drown the results; RUST_LOG, if set, still wins.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe; SIGTERM lets the runtime remove its segments if we die.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {RUNTIME_BIN}: {e}"))?;
        Ok(RuntimeProcess {
            instance: instance.to_owned(),
            child: Some(child),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn check_alive(&self) -> Res<()> {
        // try_wait needs &mut; peek at /proc instead.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map_err(|_| "the runtime exited during startup")?;
        if stat.contains(") Z ") {
            return Err("the runtime exited during startup".into());
        }
        Ok(())
    }

    /// `chimaera runtime stop`; both it and the runtime must exit 0.
    fn stop(mut self) -> Res<()> {
        let mut stopper = Command::new(RUNTIME_BIN)
            .args(["runtime", "stop"])
            .env("CHI_INSTANCE", &self.instance)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stopped = wait_timeout(&mut stopper, PATIENCE)?;
        if stopped.is_none() {
            let _ = stopper.kill();
            let _ = stopper.wait();
        }
        let mut child = self.child.take().ok_or("runtime already stopped")?;
        let exited = wait_timeout(&mut child, PATIENCE)?;
        let result = match (stopped, exited) {
            (Some(s), _) if !s.success() => Err(format!("`chimaera runtime stop` exited with {s}")),
            (None, _) => Err("`chimaera runtime stop` did not return".to_owned()),
            (_, Some(e)) if !e.success() => Err(format!("the runtime exited with {e}")),
            (_, None) => Err("the runtime did not exit after `runtime stop`".to_owned()),
            _ => Ok(()),
        };
        if result.is_err() {
            self.child = Some(child);
        }
        Ok(result?)
    }
}

impl Drop for RuntimeProcess {
    /// On an early exit: SIGTERM (a clean stop), SIGKILL after 5 s; then remove whatever
    /// the runtime left of the instance, which is this run's alone.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() with a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if !matches!(
                wait_timeout(&mut child, Duration::from_secs(5)),
                Ok(Some(_))
            ) {
                let _ = child.kill();
                let _ = child.wait();
            }
            for file in chimaera_bench::instance_files(&self.instance) {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// residue

/// Fails if any file of ours, the floor's or iceoryx2's is left, after removing what
/// iceoryx2 keeps by design: its global management segment (`…node.<version>.global_mgmt`,
/// persistent, one per prefix) and its directories.
fn check_residue(instance: &str, floor: &Path, iox: &IoxFiles) -> Res<()> {
    let mut left: Vec<PathBuf> = iox
        .left()
        .into_iter()
        .filter(|f| !f.to_string_lossy().ends_with(".global_mgmt"))
        .collect();
    iox.remove();
    left.extend(chimaera_bench::instance_files(instance));
    if floor.exists() {
        left.push(floor.to_owned());
    }
    if left.is_empty() {
        return Ok(());
    }
    // Reported, then removed: they are this run's alone.
    for file in &left {
        let _ = std::fs::remove_file(file);
    }
    Err(format!("files left behind (now removed): {left:?}").into())
}

/// Removes what earlier runs left when their coordinator was killed before its guards ran
/// (e.g. by Ctrl-C): `/dev/shm/chimaera-ipcbench-<pid>-floor`, the instance's files
/// `ipcbench-<pid>{.lock,.sock,@…}` in the user directory,
/// `/dev/shm/iox2_chibench<pid>_…` and `/tmp/chimaera-ipcbench-<pid>-iceoryx2`, for pids
/// that no longer exist. (Their runtimes got SIGTERM when the coordinator died.)
fn remove_stale_runs() {
    // The pid at the start of `rest` if whatever follows it is one of `after`.
    let pid_of = |rest: &str, after: &[char]| -> Option<u32> {
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        after
            .contains(&rest[end..].chars().next()?)
            .then(|| rest[..end].parse().ok())?
    };
    let stale = |pid: Option<u32>| {
        pid.is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
    };
    let user_dir = chimaera::instance::user_dir();
    for dir in [Path::new("/dev/shm"), Path::new("/tmp"), &user_dir] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = if dir == user_dir {
                name.strip_prefix("ipcbench-")
                    .and_then(|rest| pid_of(rest, &['.', '@']))
            } else if dir == Path::new("/tmp") {
                name.strip_prefix("chimaera-ipcbench-")
                    .filter(|rest| rest.ends_with("-iceoryx2"))
                    .and_then(|rest| pid_of(rest, &['-']))
            } else if let Some(rest) = name.strip_prefix("iox2_chibench") {
                pid_of(rest, &['_'])
            } else if name.starts_with("chimaera-") {
                name.split_once("ipcbench-")
                    .and_then(|(_, rest)| pid_of(rest, &['-', '.', '@']))
            } else {
                None
            };
            if stale(pid) {
                let path = entry.path();
                let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
            }
        }
    }
}
