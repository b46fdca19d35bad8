//! The network between runtimes, at the link: two `TonicNetwork`s on loopback in this
//! process (node 0 calls, node 1's handler answers the frame it got), next to a bare
//! tonic unary echo of the same bytes (a hand-written raw-bytes service on its own
//! runtime) measured in the same run.
//!
//! * round trip of a 64-byte frame: 31 samples of 2,000 calls, median per call; ours is
//!   driven from a plain thread (call, then wait for the reply), tonic's from `block_on`;
//! * pipelined: 100,000 frames with a window of 1,024 in flight;
//! * bulk: 1 MiB frames, 8 in flight, 256 in all.
//!
//! Run: `cargo bench --manifest-path chimaera-bench/Cargo.toml --bench net`. Last line:
//! `net: rtt_median_ns=<n> tonic_rtt_median_ns=<n> ratio=<ours/tonic> tasks_per_s=<n>
//! tonic_tasks_per_s=<n> tput_ratio=<n> bulk_mib_s=<n> tonic_bulk_mib_s=<n> bulk_ratio=<n>`
//! (issue 9's line without `bcast4_median_ns`, which needs the runtime's routing), then
//! `plot: <target dir>/bench-plots/net.svg`, the distributions of the 31 samples.
use bytes::{Buf, BufMut};
use chimaera::peer::{FrameHandler, PeerNetwork, Responder};
use chimaera_bench::Distribution;
use chimaera_net::{NetOptions, TonicNetwork};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service};
use tonic::Status;

const SMALL: usize = 64;
const BULK: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(30);
const PATH: &str = "/bench.Echo/Echo";

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let (ours, _echo_node) = our_link()?;
    let tonic = BareTonic::start()?;

    let small = vec![7u8; SMALL];
    for _ in 0..5_000 {
        ours.round_trip(&small)?;
        tonic.round_trip(&small)?;
    }
    let mut our_samples = Vec::new();
    let mut tonic_samples = Vec::new();
    for _ in 0..31 {
        let calls = 2_000u32;
        let start = Instant::now();
        for _ in 0..calls {
            ours.round_trip(&small)?;
        }
        our_samples.push(start.elapsed().as_nanos() as f64 / f64::from(calls));
        let start = Instant::now();
        for _ in 0..calls {
            tonic.round_trip(&small)?;
        }
        tonic_samples.push(start.elapsed().as_nanos() as f64 / f64::from(calls));
    }
    our_samples.sort_by(f64::total_cmp);
    tonic_samples.sort_by(f64::total_cmp);
    let (rtt, tonic_rtt) = (our_samples[15], tonic_samples[15]);
    println!(
        "round trip of {SMALL} bytes: ours {rtt:.0} ns, bare tonic {tonic_rtt:.0} ns (medians)"
    );

    let calls_per_s = |elapsed: Duration, calls: usize| calls as f64 / elapsed.as_secs_f64();
    let frames = 100_000;
    let tasks_per_s = calls_per_s(ours.pipelined(&small, frames, 1024)?, frames);
    let tonic_tasks_per_s = calls_per_s(tonic.pipelined(&small, frames, 1024)?, frames);
    println!(
        "pipelined: ours {tasks_per_s:.0}/s, bare tonic {tonic_tasks_per_s:.0}/s (window 1024)"
    );

    let bulk = vec![9u8; BULK];
    let frames = 256;
    let mib =
        |elapsed: Duration| (frames * BULK) as f64 / f64::from(1 << 20) / elapsed.as_secs_f64();
    let bulk_mib_s = mib(ours.pipelined(&bulk, frames, 8)?);
    let tonic_bulk_mib_s = mib(tonic.pipelined(&bulk, frames, 8)?);
    println!(
        "bulk 1 MiB frames: ours {bulk_mib_s:.0} MiB/s, bare tonic {tonic_bulk_mib_s:.0} MiB/s"
    );

    println!(
        "net: rtt_median_ns={rtt:.0} tonic_rtt_median_ns={tonic_rtt:.0} ratio={:.2} tasks_per_s={tasks_per_s:.0} tonic_tasks_per_s={tonic_tasks_per_s:.0} tput_ratio={:.2} bulk_mib_s={bulk_mib_s:.0} tonic_bulk_mib_s={tonic_bulk_mib_s:.0} bulk_ratio={:.2}",
        rtt / tonic_rtt,
        tasks_per_s / tonic_tasks_per_s,
        bulk_mib_s / tonic_bulk_mib_s,
    );
    let plot = chimaera_bench::latency_svg(
        "net",
        "round trip of a 64-byte frame between two nodes on loopback",
        "31 samples of 2,000 calls",
        &[
            Distribution {
                label: "chimaera-net (TonicNetwork)",
                samples_ns: &our_samples,
            },
            Distribution {
                label: "bare tonic unary echo",
                samples_ns: &tonic_samples,
            },
        ],
    )?;
    println!("plot: {}", plot.display());
    Ok(())
}

/// Answers every frame with itself.
struct Echo;

impl FrameHandler for Echo {
    fn handle(&self, _from: u32, frame: Vec<u8>, respond: Responder) {
        respond.respond(frame);
    }
}

struct OurLink {
    caller: TonicNetwork,
}

fn our_link() -> Result<(OurLink, TonicNetwork), BoxError> {
    let listeners = [
        std::net::TcpListener::bind("127.0.0.1:0")?,
        std::net::TcpListener::bind("127.0.0.1:0")?,
    ];
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let [first, second] = listeners;
    let caller =
        TonicNetwork::with_listener(NetOptions::new(0, addresses.clone(), "bench"), first)?;
    let echo = TonicNetwork::with_listener(NetOptions::new(1, addresses, "bench"), second)?;
    echo.serve(Arc::new(Echo));
    Ok((OurLink { caller }, echo))
}

impl OurLink {
    fn start(&self, frame: &[u8], done: mpsc::Sender<Result<usize, String>>) {
        self.caller.call(
            1,
            frame.to_vec(),
            DEADLINE,
            Box::new(move |answer| {
                let _ = done.send(answer.map(|a| a.len()).map_err(|e| e.to_string()));
            }),
        );
    }

    fn round_trip(&self, frame: &[u8]) -> Result<(), BoxError> {
        let (send, receive) = mpsc::channel();
        self.start(frame, send);
        receive.recv()??;
        Ok(())
    }

    fn pipelined(&self, frame: &[u8], frames: usize, window: usize) -> Result<Duration, BoxError> {
        let (send, receive) = mpsc::channel();
        let start = Instant::now();
        let mut in_flight = 0;
        for _ in 0..frames {
            if in_flight == window {
                receive.recv()??;
                in_flight -= 1;
            }
            self.start(frame, send.clone());
            in_flight += 1;
        }
        for _ in 0..in_flight {
            receive.recv()??;
        }
        Ok(start.elapsed())
    }
}

/// Frames as gRPC messages, byte for byte (the same wire as chimaera-net's codec).
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

    fn encode(&mut self, frame: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(frame.len());
        dst.put_slice(&frame);
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

/// The bare tonic echo service.
#[derive(Clone)]
struct EchoService;

struct EchoMethod;

impl tonic::server::UnaryService<Vec<u8>> for EchoMethod {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, Status>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
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
            Ok(tonic::server::Grpc::new(RawCodec)
                .max_decoding_message_size(usize::MAX)
                .unary(EchoMethod, request)
                .await)
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
    fn start() -> Result<BareTonic, BoxError> {
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

    async fn echo(channel: tonic::transport::Channel, frame: Vec<u8>) -> Result<usize, Status> {
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let answer = grpc
            .unary(
                tonic::Request::new(frame),
                http::uri::PathAndQuery::from_static(PATH),
                RawCodec,
            )
            .await?;
        Ok(answer.into_inner().len())
    }

    fn round_trip(&self, frame: &[u8]) -> Result<(), BoxError> {
        self.client_runtime
            .block_on(BareTonic::echo(self.channel.clone(), frame.to_vec()))?;
        Ok(())
    }

    fn pipelined(&self, frame: &[u8], frames: usize, window: usize) -> Result<Duration, BoxError> {
        let frame = frame.to_vec();
        let channel = self.channel.clone();
        self.client_runtime.block_on(async move {
            let start = Instant::now();
            let mut in_flight = VecDeque::with_capacity(window);
            for _ in 0..frames {
                if in_flight.len() == window {
                    if let Some(call) = in_flight.pop_front() {
                        call.await??;
                    }
                }
                in_flight.push_back(tokio::spawn(BareTonic::echo(
                    channel.clone(),
                    frame.clone(),
                )));
            }
            for call in in_flight {
                call.await??;
            }
            Ok::<_, BoxError>(start.elapsed())
        })
    }
}
