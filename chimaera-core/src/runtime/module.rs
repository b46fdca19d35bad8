//! The contract between a chimod and the runtime.
//!
//! `#[chimod]` implements [`ChiMod`] for the user's container type: a dense `match` over
//! the method id for each entry point. The runtime never sees the concrete type; it holds
//! a [`ModuleEntry`] (plain function pointers) per linked module and an
//! `Arc<dyn Container>` per container.
//!
//! Entry points and their original names:
//!
//! | original | here |
//! |---|---|
//! | `Run` | [`ChiMod::run`] — validates the input archive, calls the handler, archives the output |
//! | `Monitor(kLocalSchedule)` | [`ChiMod::monitor`] — picks the lane of the container's local queue |
//! | `Del` | `Drop` of the task (the framework owns task memory) |
//! | `SaveIn` / `LoadIn` | [`ChiMod::save_in`] / [`ChiMod::load_in`] — typed input ⇄ bytes |
//! | `SaveOut` / `LoadOut` | [`ChiMod::save_out`] / [`ChiMod::load_out`] — typed output ⇄ bytes |
//! | `NewCopy` | [`ChiMod::new_copy`] — a validated copy of a task's input (one per replica) |
//! | (none) | [`ChiMod::visit_bulk`] — the bulk arguments of an input, for a task that leaves its node |
//!
//! Every entry point that reads bytes validates them first and answers a bad archive or an
//! unknown method id with a [`TaskError`], never a panic.
use crate::codec::{Bytes, OutputBuffer};
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId};
use crate::query::PoolTopology;
use crate::runtime::context::RunContext;
use std::sync::Arc;

/// Latency class of a lane, and of the workers that serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LanePriority {
    /// Short tasks where latency matters; served first.
    LowLatency,
    /// Long or bulk tasks; served after low-latency lanes.
    HighLatency,
}

/// One row of a module's method table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// The manifest name, e.g. `kCustom`.
    pub name: &'static str,
    /// The method id.
    pub id: MethodId,
    /// The Rust handler's name, e.g. `custom`.
    pub function: &'static str,
}

/// What a module is, as checked against its manifests at compile time.
#[derive(Debug)]
pub struct ModuleInfo {
    /// `module_name` of `chimaera_mod.yaml`.
    pub name: &'static str,
    /// `namespace` of the manifests.
    pub namespace: &'static str,
    /// `version` of `chimaera_mod.yaml`.
    pub version: &'static str,
    /// Every implemented task, in id order.
    pub methods: &'static [MethodInfo],
    /// The lanes of each container's local queue, by priority; lane `i` is `lanes[i]`.
    pub lanes: &'static [LanePriority],
}

impl ModuleInfo {
    /// The method with this id, if the module implements it.
    pub fn method(&self, id: MethodId) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.id == id)
    }
}

/// Which lane of its container a task is queued on (the original's `kLocalSchedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LaneChoice {
    /// Lane 0.
    #[default]
    Default,
    /// Lane `n % lanes`.
    Lane(u32),
    /// A lane chosen by hash, so equal keys stay in one lane (and so in order).
    Hash(u64),
    /// The first lane of this priority, else lane 0.
    Priority(LanePriority),
}

impl LaneChoice {
    /// The lane index this choice selects among `lanes`.
    pub fn resolve(self, lanes: &[LanePriority]) -> usize {
        let n = lanes.len().max(1);
        match self {
            LaneChoice::Default => 0,
            LaneChoice::Lane(i) => i as usize % n,
            LaneChoice::Hash(h) => (h % n as u64) as usize,
            LaneChoice::Priority(p) => lanes.iter().position(|l| *l == p).unwrap_or(0),
        }
    }
}

/// A chimod: the container state type of a module, with its generated dispatch.
///
/// Implemented by `#[chimod]`; writing it by hand is possible but loses the manifest
/// checks.
pub trait ChiMod: Sized + Send + Sync + 'static {
    /// A decoded task input of any method (an enum generated per module).
    type TaskIn;
    /// A decoded task output of any method (an enum generated per module).
    type TaskOut;

    /// The module's name, namespace, methods and lanes.
    fn info() -> &'static ModuleInfo;
    /// `kCreate`: builds one container from the archived create input.
    fn create(ctx: &mut RunContext, input: &[u8]) -> Result<Self, TaskError>;
    /// `kDestroy`: the container is being destroyed (default: nothing to do).
    fn destroy(&self, ctx: &mut RunContext) -> Result<(), TaskError>;
    /// `Run`: runs `method` on its archived `input` and archives the output into `out`.
    fn run(
        &self,
        ctx: &mut RunContext,
        method: MethodId,
        input: &[u8],
        out: &mut OutputBuffer,
    ) -> Result<(), TaskError>;
    /// `Monitor(kLocalSchedule)`: the lane a task goes to.
    fn monitor(&self, method: MethodId, input: &[u8]) -> LaneChoice;
    /// Whether [`monitor`](Self::monitor) may choose a lane other than
    /// [`LaneChoice::Default`] for some method. `#[chimod]` says `false` when no task has
    /// a `route` hook, and the runtime then skips the call for every task; a
    /// hand-written module keeps the default, `true`.
    const LANE_HOOKS: bool = true;
    /// The container a `PoolQuery::Dynamic` task goes to, if the method has a hook, in a
    /// pool of `containers` containers on one node.
    fn dynamic_container(method: MethodId, input: &[u8], containers: u32) -> Option<ContainerId> {
        Self::dynamic_container_in(method, input, PoolTopology::single(containers))
    }
    /// The container a `PoolQuery::Dynamic` task goes to, if the method has a hook, in a
    /// pool laid out as `topology` (its containers and the nodes that hold them).
    fn dynamic_container_in(
        method: MethodId,
        input: &[u8],
        topology: PoolTopology,
    ) -> Option<ContainerId>;
    /// `SaveIn`: archives a typed input.
    fn save_in(input: &Self::TaskIn) -> Result<Bytes, TaskError>;
    /// `LoadIn`: validates and decodes the input of `method`.
    fn load_in(method: MethodId, bytes: &[u8]) -> Result<Self::TaskIn, TaskError>;
    /// `SaveOut`: archives a typed output.
    fn save_out(output: &Self::TaskOut) -> Result<Bytes, TaskError>;
    /// `LoadOut`: validates and decodes the output of `method`.
    fn load_out(method: MethodId, bytes: &[u8]) -> Result<Self::TaskOut, TaskError>;
    /// `NewCopy`: a validated copy of the input of `method`.
    fn new_copy(method: MethodId, input: &[u8]) -> Result<Bytes, TaskError>;
    /// Validates the input of `method` and hands `visit` each of its bulk arguments, with
    /// whether the handler writes it (`&mut [u8]`, `BulkOut`), in argument order: what a
    /// task sent to another node must carry from its client's share. The default visits
    /// nothing (a hand-written module whose bulk references cannot leave their node).
    fn visit_bulk(method: MethodId, input: &[u8], visit: BulkVisitor<'_>) -> Result<(), TaskError> {
        let _ = (method, input, visit);
        Ok(())
    }
}

/// What [`ChiMod::visit_bulk`] calls for each bulk argument: the archived argument and
/// whether the handler writes it.
pub type BulkVisitor<'v> = &'v mut dyn FnMut(&crate::bulk::ArchivedBulk, bool);

/// A container as the runtime holds it: the object-safe part of [`ChiMod`].
pub trait Container: Send + Sync {
    /// See [`ChiMod::run`].
    fn run(
        &self,
        ctx: &mut RunContext,
        method: MethodId,
        input: &[u8],
        out: &mut OutputBuffer,
    ) -> Result<(), TaskError>;
    /// See [`ChiMod::monitor`].
    fn monitor(&self, method: MethodId, input: &[u8]) -> LaneChoice;
    /// See [`ChiMod::destroy`].
    fn destroy(&self, ctx: &mut RunContext) -> Result<(), TaskError>;
}

impl<M: ChiMod> Container for M {
    fn run(
        &self,
        ctx: &mut RunContext,
        method: MethodId,
        input: &[u8],
        out: &mut OutputBuffer,
    ) -> Result<(), TaskError> {
        ChiMod::run(self, ctx, method, input, out)
    }
    fn monitor(&self, method: MethodId, input: &[u8]) -> LaneChoice {
        ChiMod::monitor(self, method, input)
    }
    fn destroy(&self, ctx: &mut RunContext) -> Result<(), TaskError> {
        ChiMod::destroy(self, ctx)
    }
}

/// Builds one container of a module from the archived create input.
pub type CreateContainer = fn(&mut RunContext, &[u8]) -> Result<Arc<dyn Container>, TaskError>;

/// Turns a compose entry's YAML `params` into a module's archived create input.
pub type ComposeInput = fn(&crate::compose::Params) -> Result<Bytes, TaskError>;

/// A linked module, as the runtime's registry holds it.
#[derive(Clone, Copy)]
pub struct ModuleEntry {
    /// Name, namespace, methods, lanes.
    pub info: &'static ModuleInfo,
    /// Builds one container.
    pub create: CreateContainer,
    /// Resolves `PoolQuery::Dynamic`.
    pub dynamic_container: fn(MethodId, &[u8], PoolTopology) -> Option<ContainerId>,
    /// Copies an input for another replica.
    pub new_copy: fn(MethodId, &[u8]) -> Result<Bytes, TaskError>,
    /// Finds the bulk arguments of an input (see [`ChiMod::visit_bulk`]).
    pub visit_bulk: fn(MethodId, &[u8], BulkVisitor<'_>) -> Result<(), TaskError>,
    /// Turns YAML create parameters into the archived create input, for modules that
    /// implement [`Composable`](crate::runtime::compose::Composable); `None` for the others.
    pub compose: Option<ComposeInput>,
    /// [`ChiMod::LANE_HOOKS`]: whether a task's lane is asked of its container's
    /// `monitor` (else lane 0, with no call).
    pub lane_hooks: bool,
}

impl ModuleEntry {
    /// The registry entry of chimod `M`.
    pub fn of<M: ChiMod>() -> Self {
        ModuleEntry {
            info: M::info(),
            create: |ctx, input| Ok(Arc::new(M::create(ctx, input)?) as Arc<dyn Container>),
            dynamic_container: M::dynamic_container_in,
            new_copy: M::new_copy,
            visit_bulk: M::visit_bulk,
            compose: None,
            lane_hooks: M::LANE_HOOKS,
        }
    }
}

impl std::fmt::Debug for ModuleEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleEntry")
            .field("info", self.info)
            .finish_non_exhaustive()
    }
}
