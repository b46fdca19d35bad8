//! Tasks between runtimes on loopback, next to bare tonic doing the same in the same run.
//!
//! Four `chimaera runtime start` processes (this crate's `chimaera` binary, one worker
//! each) form a cluster on 127.0.0.1 from one hostfile, each with its own shm instance
//! and port; this process is a shared-memory client of node 0. Next to them, a bare tonic
//! server with a raw-bytes echo (unary and streaming) on its own two-thread runtime.
//!
//! * **rtt**: a sync empty MOD_NAME `custom` task to container 1, which lives on node 1
//!   (client → node 0 → gRPC → node 1 → back), 31 samples of 300 calls, median per call;
//!   tonic: a unary echo of a 64-byte message from `block_on`, same sampling;
//! * **tput**: pipelined remote tasks (100 in flight, for `NET_BENCH_SECS`, default 2 s)
//!   next to tonic bidirectional streaming of 64-byte messages with the same window;
//! * **bcast4**: a sync `custom` Broadcast to the 4 containers (one per node, replies
//!   aggregated), 31 samples of 50 calls, median per call;
//! * **bulk**: 1 MiB of bdev RAM writes to container 1 (node 1) at a time, as eight writes
//!   of 128 KiB (the device's largest block), 8 MiB in flight, from a buffer in this
//!   client's shared memory (`Client::allocate_buffer`, carried to node 1 by the runtime),
//!   next to tonic client→server streaming of 1 MiB messages each acknowledged, 8 in
//!   flight.
//!
//! Also printed (not in the last line): the link alone — two `TonicNetwork`s in this
//! process echoing 64-byte frames — to split the runtime's share of the rtt from the
//! network layer's.
//!
//! Run: `cargo bench --manifest-path chimaera-bench/Cargo.toml --bench net`. Last line:
//! `net: rtt_median_ns=<n> tonic_rtt_median_ns=<n> ratio=<ours/tonic> tasks_per_s=<n>
//! tonic_tasks_per_s=<n> tput_ratio=<n> bcast4_median_ns=<n> bulk_mib_s=<n>
//! tonic_bulk_mib_s=<n> bulk_ratio=<n>`, then `plot: <target dir>/bench-plots/net.svg`
//! (the distributions of the rtt samples).
use bytes::{Buf, BufMut};
use chimaera::admin_api::PoolOptions;
use chimaera::bdev::{BdevClient, BdevParams, BdevType};
use chimaera::config::RuntimeConfig;
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::peer::{FrameHandler, PeerNetwork, Responder};
use chimaera::prelude::*;
use chimaera_bench::{Distribution, Percentiles};
use chimaera_net::{NetOptions, TonicNetwork};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::{BoxFuture, Service};
use tonic::Status;

const NODES: u32 = 4;
/// The container the point-to-point measurements address: it lives on node 1.
const REMOTE: ContainerId = 1;
const SMALL: usize = 64;
const BULK: usize = 1 << 20;
/// The RAM bdev's largest block: a 1 MiB write is eight writes of this.
const BDEV_BLOCK: usize = 128 << 10;
const SAMPLES: usize = 31;
const RTT_CALLS: u32 = 300;
const BCAST_CALLS: u32 = 50;
const WINDOW: usize = 100;
const BULK_WINDOW: usize = 8;
const DEADLINE: Duration = Duration::from_secs(30);
const PATIENCE: Duration = Duration::from_secs(30);
const SECRET: &str = "net-bench-cluster-secret-0123456789";
const RUNTIME_BIN: &str = env!("CARGO_BIN_EXE_chimaera");
const UNARY_PATH: &str = "/bench.Echo/Echo";
const STREAM_PATH: &str = "/bench.Echo/Stream";
const SINK_PATH: &str = "/bench.Echo/Sink";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

fn main() -> Res<()> {
    let secs: f64 = std::env::var("NET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let cluster = Cluster::start()?;
    let chi = cluster.client(0)?;
    let tonic = BareTonic::start()?;

    let m = ModNameClient::create_with(
        &chi,
        PoolQuery::local(),
        "netbench",
        PoolOptions::containers(NODES),
        CreateParams::default(),
    )?;
    let remote = PoolQuery::direct_id(REMOTE);
    let small = vec![7u8; SMALL];
    for i in 0..2_000 {
        m.custom(remote, "", i)?;
        tonic.round_trip(&small)?;
    }

    // rtt and bcast4: one sample of each per round, so that a change of the machine's
    // state during the run hits them alike.
    let (mut ours, mut theirs, mut bcast) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let start = Instant::now();
        for i in 0..RTT_CALLS {
            m.custom(remote, "", i)?;
        }
        ours.push(per_call(start, RTT_CALLS));
        let start = Instant::now();
        for _ in 0..RTT_CALLS {
            tonic.round_trip(&small)?;
        }
        theirs.push(per_call(start, RTT_CALLS));
        let start = Instant::now();
        for i in 0..BCAST_CALLS {
            m.custom(PoolQuery::broadcast(), "", i)?;
        }
        bcast.push(per_call(start, BCAST_CALLS));
    }
    let (rtt, tonic_rtt, bcast4) = (
        Percentiles::median_of(&ours),
        Percentiles::median_of(&theirs),
        Percentiles::median_of(&bcast),
    );
    println!(
        "round trip, empty task to node 1: {rtt:.0} ns; bare tonic unary echo of {SMALL} bytes: \
         {tonic_rtt:.0} ns; broadcast to {NODES} nodes: {bcast4:.0} ns (medians of {SAMPLES})"
    );

    let run_for = Duration::from_secs_f64(secs);
    let tasks_per_s = pipelined_tasks(&m, remote, run_for)?;
    let tonic_tasks_per_s = tonic.streamed(&small, WINDOW, run_for, STREAM_PATH)?;
    println!(
        "pipelined, window {WINDOW}: ours {tasks_per_s:.0} tasks/s, bare tonic streaming \
         {tonic_tasks_per_s:.0} messages/s"
    );

    let bulk_mib_s = bulk_writes(&chi, run_for)?;
    let bulk = vec![9u8; BULK];
    let tonic_bulk_mib_s =
        tonic.streamed(&bulk, BULK_WINDOW, run_for, SINK_PATH)? * BULK as f64 / f64::from(1 << 20);
    println!(
        "1 MiB writes, window {BULK_WINDOW}: ours {bulk_mib_s:.0} MiB/s (bdev RAM on node 1), \
         bare tonic streaming {tonic_bulk_mib_s:.0} MiB/s"
    );

    let (link_rtt, link_tonic_rtt) = link_round_trips(&tonic, &small)?;
    println!(
        "link alone: TonicNetwork echo of {SMALL} bytes {link_rtt:.0} ns, bare tonic \
         {link_tonic_rtt:.0} ns (medians; no runtime, no task)"
    );

    println!(
        "net: rtt_median_ns={rtt:.0} tonic_rtt_median_ns={tonic_rtt:.0} ratio={:.2} \
         tasks_per_s={tasks_per_s:.0} tonic_tasks_per_s={tonic_tasks_per_s:.0} tput_ratio={:.2} \
         bcast4_median_ns={bcast4:.0} bulk_mib_s={bulk_mib_s:.0} \
         tonic_bulk_mib_s={tonic_bulk_mib_s:.0} bulk_ratio={:.2}",
        rtt / tonic_rtt,
        tasks_per_s / tonic_tasks_per_s,
        bulk_mib_s / tonic_bulk_mib_s,
    );
    let plot = chimaera_bench::latency_svg(
        "net",
        "round trip to another node on loopback",
        &format!("{SAMPLES} samples of {RTT_CALLS} calls"),
        &[
            Distribution {
                label: "chimaera-rs: empty task, client → node 0 → node 1",
                samples_ns: &ours,
            },
            Distribution {
                label: "bare tonic unary echo (64 bytes)",
                samples_ns: &theirs,
            },
        ],
    )?;
    println!("plot: {}", plot.display());
    drop((m, chi));
    cluster.stop()
}

fn per_call(start: Instant, calls: u32) -> f64 {
    start.elapsed().as_nanos() as f64 / f64::from(calls)
}

/// Async `custom` tasks to `query`, `WINDOW` in flight, waited in order, for `run_for`.
fn pipelined_tasks(m: &ModNameClient, query: PoolQuery, run_for: Duration) -> Res<f64> {
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let start = Instant::now();
    let mut completed = 0u64;
    let mut submitted = 0u32;
    while start.elapsed() < run_for {
        for _ in 0..WINDOW {
            if in_flight.len() == WINDOW {
                if let Some(pending) = in_flight.pop_front() {
                    let _: String = Pending::wait(pending)?;
                    completed += 1;
                }
            }
            in_flight.push_back(m.async_custom(query, "", submitted)?);
            submitted = submitted.wrapping_add(1);
        }
    }
    for pending in in_flight {
        pending.wait()?;
        completed += 1;
    }
    Ok(completed as f64 / start.elapsed().as_secs_f64())
}

/// Writes of 1 MiB to a RAM bdev whose container 1 lives on node 1, each as eight writes
/// of 128 KiB (the device's largest block), `BULK_WINDOW` MiB in flight, each write from
/// its own slice of one shared buffer; MiB/s.
fn bulk_writes(chi: &Client, run_for: Duration) -> Res<f64> {
    let bdev = BdevClient::create_with(
        chi,
        PoolQuery::local(),
        "netbench-ram",
        PoolOptions::containers(NODES),
        BdevParams {
            bdev_type: BdevType::Ram,
            total_size: (BULK_WINDOW * BULK) as u64 * 2,
            ..BdevParams::default()
        },
    )?;
    let remote = PoolQuery::direct_id(REMOTE);
    let writes_in_flight = BULK_WINDOW * BULK / BDEV_BLOCK;
    let blocks = (0..writes_in_flight)
        .map(|_| {
            bdev.allocate_blocks(remote, BDEV_BLOCK as u64)
                .map(|b| b[0])
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut buffer = chi.allocate_buffer(BULK_WINDOW * BULK)?;
    buffer.fill(9);
    let slices: Vec<&[u8]> = buffer.chunks(BDEV_BLOCK).collect();
    let round = |count: usize| -> Res<u64> {
        let mut in_flight = VecDeque::with_capacity(writes_in_flight);
        let mut written = 0u64;
        for i in 0..count {
            if in_flight.len() == writes_in_flight {
                if let Some(pending) = in_flight.pop_front() {
                    written += Pending::wait(pending)?;
                }
            }
            let slot = i % writes_in_flight;
            in_flight.push_back(bdev.async_write(remote, blocks[slot], slices[slot])?);
        }
        for pending in in_flight {
            written += pending.wait()?;
        }
        Ok(written)
    };
    round(4 * writes_in_flight)?;
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < run_for {
        written += round(4 * writes_in_flight)?;
    }
    Ok(written as f64 / f64::from(1 << 20) / start.elapsed().as_secs_f64())
}

/// Round trips of `frame` over two `TonicNetwork`s of this process, next to bare tonic.
fn link_round_trips(tonic: &BareTonic, frame: &[u8]) -> Res<(f64, f64)> {
    let listeners = [
        std::net::TcpListener::bind("127.0.0.1:0")?,
        std::net::TcpListener::bind("127.0.0.1:0")?,
    ];
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let [first, second] = listeners;
    let caller = TonicNetwork::with_listener(NetOptions::new(0, addresses.clone(), SECRET), first)?;
    let echo = TonicNetwork::with_listener(NetOptions::new(1, addresses, SECRET), second)?;
    echo.serve(Arc::new(Echo));
    let round_trip = || -> Res<()> {
        let (send, receive) = mpsc::channel();
        caller.call(
            1,
            frame.to_vec(),
            DEADLINE,
            Box::new(move |answer| {
                let _ = send.send(answer.map(|a| a.len()).map_err(|e| e.to_string()));
            }),
        );
        receive.recv()??;
        Ok(())
    };
    for _ in 0..2_000 {
        round_trip()?;
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let start = Instant::now();
        for _ in 0..RTT_CALLS {
            round_trip()?;
        }
        ours.push(per_call(start, RTT_CALLS));
        let start = Instant::now();
        for _ in 0..RTT_CALLS {
            tonic.round_trip(frame)?;
        }
        theirs.push(per_call(start, RTT_CALLS));
    }
    caller.shutdown();
    echo.shutdown();
    Ok((
        Percentiles::median_of(&ours),
        Percentiles::median_of(&theirs),
    ))
}

/// Answers every frame with itself.
struct Echo;

impl FrameHandler for Echo {
    fn handle(&self, _from: u32, frame: Vec<u8>, respond: Responder) {
        respond.respond(frame);
    }
}

// ---------------------------------------------------------------------------------------
// the cluster

/// `NODES` runtime processes on 127.0.0.1, node 0 started first (the others ask it for
/// the cluster's pools as they start); stopped cleanly by [`Cluster::stop`], killed and
/// cleaned up on an early exit.
struct Cluster {
    nodes: Vec<RuntimeProcess>,
    files: Vec<PathBuf>,
}

impl Cluster {
    fn start() -> Res<Cluster> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let pid = std::process::id();
        let listeners: Vec<std::net::TcpListener> = (0..NODES)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let hosts: String = listeners
            .iter()
            .map(|listener| listener.local_addr().map(|a| format!("{a}\n")))
            .collect::<Result<_, _>>()?;
        drop(listeners);
        let hostfile = dir.join(format!("netbench-{pid}.hosts"));
        std::fs::write(&hostfile, hosts)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            files: vec![hostfile.clone()],
        };
        for node in 0..NODES {
            let config = dir.join(format!("netbench-{pid}-n{node}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "instance: netbench-{pid}-n{node}\nworkers:\n  low_latency: 1\n  \
                     high_latency: 0\nmax_clients: 4\nshm:\n  client_data_size: 64MiB\n\
                     networking:\n  hostfile: {}\n  node_id: {node}\n  \
                     rpc_timeout_ms: 10000\n  secret: {SECRET}\n",
                    hostfile.display()
                ),
            )?;
            cluster.files.push(config.clone());
            cluster.nodes.push(RuntimeProcess::start(config)?);
        }
        Ok(cluster)
    }

    fn client(&self, node: usize) -> Res<Client> {
        Ok(Client::connect_to(&self.nodes[node].config)?)
    }

    /// `chimaera runtime stop` on every node, the last first; all must exit 0.
    fn stop(mut self) -> Res<()> {
        while let Some(node) = self.nodes.pop() {
            node.stop()?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// One `chimaera runtime start` child; on an early exit SIGTERM, SIGKILL after 5 s, and
/// its instance files removed.
struct RuntimeProcess {
    config: RuntimeConfig,
    config_path: PathBuf,
    child: Option<Child>,
}

impl RuntimeProcess {
    fn start(config_path: PathBuf) -> Res<RuntimeProcess> {
        let config = RuntimeConfig::from_file(&config_path)?;
        let mut command = Command::new(RUNTIME_BIN);
        command
            .args(["runtime", "start"])
            .env("CHI_SERVER_CONF", &config_path)
            .env_remove("CHI_INSTANCE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe; SIGTERM lets the runtime remove its segments if we die.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {RUNTIME_BIN}: {e}"))?;
        let mut runtime = RuntimeProcess {
            config,
            config_path,
            child: Some(child),
        };
        let start = Instant::now();
        while let Err(error) = Client::connect_to(&runtime.config) {
            if let Some(child) = runtime.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    runtime.child = None;
                    return Err(format!("a runtime exited during start-up: {status}").into());
                }
            }
            if start.elapsed() > PATIENCE {
                return Err(format!("a runtime did not serve within {PATIENCE:?}: {error}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(runtime)
    }

    fn stop(mut self) -> Res<()> {
        let stopped = Command::new(RUNTIME_BIN)
            .args(["runtime", "stop"])
            .env("CHI_SERVER_CONF", &self.config_path)
            .env_remove("CHI_INSTANCE")
            .stdout(Stdio::null())
            .status()?;
        let mut child = self.child.take().ok_or("runtime already stopped")?;
        let deadline = Instant::now() + PATIENCE;
        let exited = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                return Err("a runtime did not exit after `runtime stop`".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !stopped.success() || !exited.success() {
            return Err(format!("runtime stop: {stopped}, runtime: {exited}").into());
        }
        Ok(())
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill() with a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let instance = self.config.instance.to_string();
        let (dot, at) = (format!("{instance}."), format!("{instance}@"));
        if let Ok(entries) = std::fs::read_dir(chimaera::instance::user_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&dot) || name.starts_with(&at) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// bare tonic

/// Messages as gRPC messages, byte for byte (the same wire as chimaera-net's codec).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, message: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(message.len());
        dst.put_slice(&message);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(Vec::from(src.copy_to_bytes(src.remaining()))))
    }
}

/// The bare tonic service: `Echo` (unary), `Stream` (each message echoed) and `Sink`
/// (each message acknowledged with its length, 8 bytes).
#[derive(Clone)]
struct EchoService;

struct UnaryEcho;

impl tonic::server::UnaryService<Vec<u8>> for UnaryEcho {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, Status>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

type MessageStream = std::pin::Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>;

/// Answers each message of the stream as it arrives: with itself, or (`ack`) with its
/// length.
struct StreamEcho {
    ack: bool,
}

impl tonic::server::StreamingService<Vec<u8>> for StreamEcho {
    type Response = Vec<u8>;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<tonic::Response<MessageStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<Vec<u8>>>) -> Self::Future {
        let ack = self.ack;
        Box::pin(async move {
            let answers = request.into_inner().map(move |message| {
                message.map(|m| {
                    if ack {
                        (m.len() as u64).to_le_bytes().to_vec()
                    } else {
                        m
                    }
                })
            });
            Ok(tonic::Response::new(Box::pin(answers) as MessageStream))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec).max_decoding_message_size(usize::MAX);
            Ok(match request.uri().path() {
                STREAM_PATH => grpc.streaming(StreamEcho { ack: false }, request).await,
                SINK_PATH => grpc.streaming(StreamEcho { ack: true }, request).await,
                _ => grpc.unary(UnaryEcho, request).await,
            })
        })
    }
}

/// A tonic server and client, each on its own two-thread runtime like a TonicNetwork.
struct BareTonic {
    client_runtime: tokio::runtime::Runtime,
    _server_runtime: tokio::runtime::Runtime,
    channel: tonic::transport::Channel,
}

impl BareTonic {
    fn start() -> Res<BareTonic> {
        let runtime = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        };
        let server_runtime = runtime()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _context = server_runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        server_runtime.spawn(tonic::transport::Server::builder().serve_with_incoming(
            EchoService,
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        ));
        let client_runtime = runtime()?;
        let channel = client_runtime.block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
                .tcp_nodelay(true)
                .connect(),
        )?;
        Ok(BareTonic {
            client_runtime,
            _server_runtime: server_runtime,
            channel,
        })
    }

    fn grpc(&self) -> tonic::client::Grpc<tonic::transport::Channel> {
        tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    fn round_trip(&self, message: &[u8]) -> Res<()> {
        let mut grpc = self.grpc();
        let message = message.to_vec();
        self.client_runtime.block_on(async move {
            grpc.ready().await?;
            grpc.unary(
                tonic::Request::new(message),
                http::uri::PathAndQuery::from_static(UNARY_PATH),
                RawCodec,
            )
            .await?;
            Ok(())
        })
    }

    /// Messages over one bidirectional stream on `path`, at most `window` unanswered, for
    /// `run_for`; answers per second.
    fn streamed(
        &self,
        message: &[u8],
        window: usize,
        run_for: Duration,
        path: &'static str,
    ) -> Res<f64> {
        let mut grpc = self.grpc();
        let message = message.to_vec();
        self.client_runtime.block_on(async move {
            let (send, receive) = tokio::sync::mpsc::channel::<Vec<u8>>(window);
            grpc.ready().await?;
            let outgoing = tokio_stream::wrappers::ReceiverStream::new(receive);
            let call = grpc.streaming(
                tonic::Request::new(outgoing),
                http::uri::PathAndQuery::from_static(path),
                RawCodec,
            );
            for _ in 0..window {
                send.send(message.clone()).await?;
            }
            let mut answers = call.await?.into_inner();
            let start = Instant::now();
            let mut answered = 0u64;
            let mut sent = window as u64;
            while let Some(answer) = answers.message().await? {
                std::hint::black_box(answer);
                answered += 1;
                if start.elapsed() < run_for {
                    send.send(message.clone()).await?;
                    sent += 1;
                } else if answered == sent {
                    break;
                }
            }
            Ok(answered as f64 / start.elapsed().as_secs_f64())
        })
    }
}
