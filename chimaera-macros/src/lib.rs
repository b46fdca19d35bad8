//! `#[chimod]`, `#[task]` and `#[wire]`: compile-time generation of chimaera-rs modules.
//!
//! A chimod is a container struct marked [`macro@chimod`], its impl block marked
//! `#[chimod]` whose methods marked [`macro@task`] are the module's tasks, and a
//! manifest, `chimaera_mod.yaml`, that the macros check the code against. From these
//! the macros generate the method table and wire types (`foo_tasks`), the `ChiMod`
//! dispatch the runtime calls, and a typed client (`FooClient`). [`macro@wire`] gives a
//! type of your own a wire layout, so it can be a task argument or output.
//!
//! Use them through the `chimaera` crate (`use chimaera::prelude::*;`); its `guide`
//! module walks through a first chimod.
//!
//! Inside, each entry point runs one pipeline, one file per stage: `attr` (attribute
//! arguments) → `model` (a typed model of the chimod and its tasks) → `manifest` (the
//! manifests, read and checked by the `chimaera-manifest` crate) + `validate` (code
//! against manifest) → `expand` (one generator per emitted item), with one `Ctxt`
//! collecting every error. The user's item is always emitted, so one mistake gives one
//! precise error instead of a cascade (and IDEs keep working).
mod attr;
mod ctxt;
mod expand;
mod manifest;
mod model;
mod names;
mod validate;

use crate::ctxt::Ctxt;
use crate::expand::{
    client, compose, dispatch, method_table, struct_items, tracking, user_impl, wire, Names,
};
use crate::manifest::Env;
use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::ToTokens;

/// Marks a chimod: on its container struct, and on the impl block whose
/// [`macro@task`] methods are its tasks.
///
/// Both attributes read the module's manifest, `chimaera_mod.yaml`; every disagreement
/// between code and manifest (a name, a namespace, an id, an entry without a task) is a
/// compile error on the token at fault, naming the manifest's `file:line:column`.
///
/// # Keys on the struct
///
/// * `name = "…"` (required): the module's name, equal to the manifest's
///   `module_name`. Clients and `compose:` entries name the module by it.
/// * `manifest = "path"`: the module manifest, relative to the source file like
///   `include_str!`. Default: `chimaera_mod.yaml` next to the crate's `Cargo.toml`.
///   The manifest's `namespace` must equal that of the nearest `chimaera_repo.yaml` in
///   its directory or above (if there is one).
/// * `lanes(low = N, high = M)`: each container's local queue has `N` low-latency and
///   `M` high-latency lanes (default `lanes(low = 1)`; at least one lane in all). A
///   task's `route` hook picks the lane of each call.
///
/// The struct is the state of one container. Tasks run concurrently on several
/// workers and take `&self`, so the state is `Sync`: atomics, or data behind a
/// `CoMutex` / `CoRwLock`, whose waits park the task instead of blocking a worker.
///
/// # Keys on the impl block
///
/// * `manifest = "path"`: as on the struct; both must name the same file.
/// * `composable`: pools of the module can be created from YAML — a `compose:` entry
///   of the runtime config or of `chimaera compose FILE`. The entry's `params` mapping
///   is deserialized into `create`'s parameter (so its type derives serde's
///   `Deserialize`, which `#[wire(compose)]` adds; a `create` without parameters
///   accepts only empty params). Register the module with
///   `RuntimeBuilder::composable_module`.
///
/// # What is generated
///
/// For a container `Counter`:
///
/// * `counter_tasks`: a `const` per task with its method id (`ADD` for `fn add`),
///   `METHODS`, the wire types (`AddIn`, `ArchivedAddIn`, `AddOut`) and the `TaskIn` /
///   `TaskOut` enums;
/// * `impl ChiMod for Counter`: what the runtime calls to create, run, route, archive
///   and copy tasks;
/// * `CounterClient`, the typed client: `create(&client, query, pool_name, params…)`
///   (gets or creates a pool), `create_with` (the same with `PoolOptions`), `attach`,
///   `pool_id`, `client`, `destroy_pool`, and for every task `fn add`: `add` (runs it
///   and waits), `async_add` (returns a `Pending`) and `spawn_add` (fire-and-forget or
///   periodic, with a `Schedule`). A task may not be named like one of these.
///
/// # Example
///
/// With `doc/counter.yaml`:
///
/// ```yaml
/// module_name: counter
/// namespace: chimaera
/// version: 0.1.0
/// kCreate: 0
/// kAdd: 10
/// kGet: 11
/// ```
///
/// ```
/// use chimaera::prelude::*;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// `create`'s parameter; `compose` also lets YAML params become one.
/// #[wire(compose)]
/// #[derive(Clone, Debug, PartialEq)]
/// pub struct CounterParams {
///     pub start: u64,
/// }
///
/// #[chimod(name = "counter", manifest = "../doc/counter.yaml", lanes(low = 2))]
/// pub struct Counter {
///     value: AtomicU64,
/// }
///
/// #[chimod(manifest = "../doc/counter.yaml", composable)]
/// impl Counter {
///     #[task(method = 0)]
///     fn create(params: CounterParams) -> Self {
///         Counter { value: AtomicU64::new(params.start) }
///     }
///
///     /// Adds `amount`; returns the new value.
///     #[task(method = 10)]
///     fn add(&self, amount: u64) -> u64 {
///         self.value.fetch_add(amount, Ordering::Relaxed) + amount
///     }
///
///     #[task(method = 11)]
///     fn get(&self) -> u64 {
///         self.value.load(Ordering::Relaxed)
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = chimaera::builder().composable_module::<Counter>().start()?;
/// let chi = runtime.client();
/// let counter =
///     CounterClient::create(&chi, PoolQuery::local(), "hits", CounterParams { start: 1 })?;
/// assert_eq!(counter.add(PoolQuery::local(), 2)?, 3);
/// assert_eq!(counter.async_add(PoolQuery::local(), 4)?.wait()?, 7);
/// assert_eq!(counter.get(PoolQuery::local())?, 7);
/// assert_eq!(counter_tasks::ADD, 10);
///
/// // The same params from YAML, as a `compose:` entry gives them.
/// use chimaera::compose::{Composable, Params};
/// let params: Params = "{ start: 5 }".parse()?;
/// Counter::create_input(&params)?;
/// runtime.stop();
/// # Ok(())
/// # }
/// ```
#[proc_macro_attribute]
pub fn chimod(args: TokenStream, input: TokenStream) -> TokenStream {
    let env = Env::from_process(proc_macro::Span::call_site().local_file());
    let original = TokenStream2::from(input.clone());
    let output = match syn::parse::<syn::Item>(input) {
        Ok(syn::Item::Struct(item)) => chimod_struct(args.into(), &item, &env),
        Ok(syn::Item::Impl(item)) => chimod_impl(args.into(), &item, &env),
        Ok(other) => with_error(
            other.into_token_stream(),
            syn::Error::new(
                Span::call_site(),
                "`#[chimod]` goes on the container struct (with `name = \"…\"`) and on its impl block",
            ),
        ),
        Err(error) => with_error(original, error),
    };
    output.into()
}

/// Marks a task: a method of a `#[chimod]` impl block (which consumes the attribute;
/// anywhere else it is an error).
///
/// # Keys
///
/// * `method = N` (required): the method id, a literal equal to the manifest's entry
///   for this task — `kAdd: 10` for `fn add` (the entry is `k` + the function name in
///   UpperCamelCase). Ids 0–9 are the inherited methods with fixed names: `kCreate` 0
///   (`fn create`, required), `kDestroy` 1, `kNodeFailure` 2, `kRecover` 3,
///   `kMigrate` 4, `kUpgrade` 5. Custom tasks use 10 and up, each id once.
/// * `route = hook`: picks the lane of each call, before the task runs:
///   `fn hook(&self, input: &foo_tasks::ArchivedXIn) -> LaneChoice`, reading the
///   archived input in place (default: lane 0). A bare name is a function of the
///   container (`Self::hook`); a path names any function. A module with no `route` hook
///   on any task gets `ChiMod::LANE_HOOKS = false`, and the runtime queues its tasks on
///   lane 0 without asking.
/// * `dynamic = hook`: the container a `PoolQuery::dynamic()` call goes to:
///   `fn hook(input: &foo_tasks::ArchivedXIn, containers: u32) -> ContainerId`, or, to
///   see which node holds which container,
///   `fn hook(input: &foo_tasks::ArchivedXIn, topology: PoolTopology) -> ContainerId`.
///
/// `create` and `destroy` are not routed: they take neither key.
///
/// # Receiver and context
///
/// Every task takes `&self`, except `create`, which has no receiver and returns the
/// container: `Self`, or `Result<Self, E>`. `destroy` takes only `&self` and the
/// optional context. The task's context, `ctx: &mut RunContext`, is optional and comes
/// first (after `&self`): through it a task sleeps, waits and calls other tasks
/// without blocking its worker.
///
/// # Arguments
///
/// Arguments are the task's inputs and become the client method's parameters, in
/// order. Their types:
///
/// | in the task | the client passes | travels as |
/// |---|---|---|
/// | `T` (by value) | `T` | `T`'s archive; `T` has a wire layout (`#[wire]`) |
/// | `&str` | `&str` | a string, read in place without a copy |
/// | `&[i8]` | `&[i8]` | bytes, read in place without a copy |
/// | `&[T]` | `&[T]` | a `Vec<T>`, deserialized, then lent |
/// | `&T` | `&T` | `T`, deserialized, then lent |
/// | `&mut T` | `&mut T` | in-out: `T` goes in, the handler's value comes back into the caller's |
/// | `&[u8]` | `&[u8]` | a byte buffer: referenced in place when it lies in the client's `allocate_buffer` memory, else copied; the handler gets a private copy |
/// | `&mut [u8]` | `&mut [u8]` | a byte buffer the handler writes; written back into the caller's |
/// | `BulkIn<'_>` | `&[u8]` | a zero-copy view of the caller's buffer, read with copying calls |
/// | `BulkOut<'_>` | `&mut [u8]` | a zero-copy view the handler writes in place |
///
/// Not allowed: `async fn`, generic types or consts (lifetimes are fine), `impl Trait`,
/// patterns instead of names, `&mut str`, `&mut [T]` other than `&mut [u8]`.
///
/// # Return value
///
/// The output: `R` (any type with a wire layout), nothing (`()`), or `Result<R, E>`
/// where `E: Into<TaskError>` — an `Err` fails the call with that error. The client's
/// `x` returns `Result<R, TaskError>` (in-out arguments are updated in place); its
/// `async_x` yields `R`, or `(R, in-out values…)` when there are in-out arguments.
///
/// # Examples
///
/// Every form, against `doc/forms.yaml`:
///
/// ```
/// use chimaera::prelude::*;
/// use forms_tasks::{ArchivedAnywhereIn, ArchivedByKeyIn};
///
/// #[wire]
/// #[derive(Clone, Debug, PartialEq)]
/// pub struct Stats {
///     pub count: u32,
///     pub sum: i64,
/// }
///
/// #[chimod(name = "forms", manifest = "../doc/forms.yaml", lanes(low = 2, high = 1))]
/// pub struct Forms;
///
/// #[chimod(manifest = "../doc/forms.yaml")]
/// impl Forms {
///     #[task(method = 0)]
///     fn create(_ctx: &mut RunContext) -> Result<Self, TaskError> {
///         Ok(Forms)
///     }
///
///     #[task(method = 1)]
///     fn destroy(&self, _ctx: &mut RunContext) {}
///
///     /// `&str` in, `String` out.
///     #[task(method = 10)]
///     fn greet(&self, name: &str) -> String {
///         format!("hello, {name}")
///     }
///
///     /// By value, and a borrowed slice of any wire type.
///     #[task(method = 11)]
///     fn sum(&self, base: i64, values: &[i64]) -> i64 {
///         base + values.iter().sum::<i64>()
///     }
///
///     /// A borrowed user type, a user type out.
///     #[task(method = 12)]
///     fn total(&self, stats: &Stats, extra: Stats) -> Stats {
///         Stats { count: stats.count + extra.count, sum: stats.sum + extra.sum }
///     }
///
///     /// In-out: the caller's `String` is updated.
///     #[task(method = 13)]
///     fn append(&self, text: &mut String, suffix: &str) -> usize {
///         text.push_str(suffix);
///         text.len()
///     }
///
///     /// A byte buffer in (a private copy).
///     #[task(method = 14)]
///     fn checksum(&self, data: &[u8]) -> u64 {
///         data.iter().map(|&b| u64::from(b)).sum()
///     }
///
///     /// A byte buffer the handler writes.
///     #[task(method = 15)]
///     fn fill(&self, out: &mut [u8], value: u8) {
///         out.fill(value);
///     }
///
///     /// A zero-copy view in.
///     #[task(method = 16)]
///     fn scan(&self, data: BulkIn<'_>) -> u32 {
///         data.to_vec().iter().filter(|&&b| b == 0).count() as u32
///     }
///
///     /// A zero-copy view written in place.
///     #[task(method = 17)]
///     fn zero(&self, mut out: BulkOut<'_>) {
///         out.fill(0);
///     }
///
///     /// A failure is an `Err`.
///     #[task(method = 18)]
///     fn divide(&self, a: u32, b: u32) -> Result<u32, TaskError> {
///         a.checked_div(b).ok_or_else(|| TaskError::failed("division by zero; pass b > 0"))
///     }
///
///     /// No argument, no output.
///     #[task(method = 19)]
///     fn ping(&self) {}
///
///     /// `route`: calls with one key run in one lane, in order.
///     #[task(method = 20, route = lane_of)]
///     fn by_key(&self, key: u64) -> u64 {
///         key
///     }
///
///     /// `dynamic`: the input picks the container.
///     #[task(method = 21, dynamic = container_of)]
///     fn anywhere(&self, key: u32) -> u32 {
///         key
///     }
///
///     fn lane_of(&self, input: &ArchivedByKeyIn) -> LaneChoice {
///         LaneChoice::Hash(input.0.to_native())
///     }
///
///     fn container_of(input: &ArchivedAnywhereIn, containers: u32) -> ContainerId {
///         input.0.to_native() % containers
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = chimaera::builder().module::<Forms>().start()?;
/// let chi = runtime.client();
/// let forms = FormsClient::create(&chi, PoolQuery::local(), "forms")?;
/// let q = PoolQuery::local();
/// assert_eq!(forms.greet(q, "chimaera")?, "hello, chimaera");
/// assert_eq!(forms.sum(q, 1, &[2, 3])?, 6);
/// let one = Stats { count: 1, sum: 5 };
/// assert_eq!(forms.total(q, &one, one.clone())?, Stats { count: 2, sum: 10 });
/// let mut text = String::from("a");
/// assert_eq!(forms.append(q, &mut text, "bc")?, 3);
/// assert_eq!(text, "abc");
/// assert_eq!(forms.async_append(q, &text, "d")?.wait()?, (4, "abcd".to_owned()));
/// assert_eq!(forms.checksum(q, &[1, 2, 3])?, 6);
/// let mut page = [0u8; 4];
/// forms.fill(q, &mut page, 7)?;
/// assert_eq!(page, [7; 4]);
/// assert_eq!(forms.scan(q, &[0, 1, 0])?, 2);
/// forms.zero(q, &mut page)?;
/// assert_eq!(page, [0; 4]);
/// assert!(forms.divide(q, 1, 0).is_err());
/// forms.ping(q)?;
/// assert_eq!(forms.by_key(q, 9)?, 9);
/// assert_eq!(forms.anywhere(PoolQuery::dynamic(), 4)?, 4);
/// runtime.stop();
/// # Ok(())
/// # }
/// ```
#[proc_macro_attribute]
pub fn task(_args: TokenStream, input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        Span::call_site(),
        "`#[task]` only works on methods of a `#[chimod] impl` block; add `#[chimod]` above the impl",
    );
    with_error(input.into(), error).into()
}

/// Gives a type of your own a wire layout, so it can be a task argument, output or
/// `create` parameter.
///
/// Adds the rkyv derives (`Archive`, `Serialize`, `Deserialize`) through the
/// `chimaera` crate, so your crate needs no `rkyv` dependency of its own. A type used
/// in a task without a wire layout is a compile error on that argument, saying to add
/// `#[wire]`.
///
/// # Keys
///
/// * `compose`: also derives serde's `Deserialize` (again through `chimaera`), so the
///   type can be read from the `params` of a `compose:` entry — the `create`
///   parameter of a `#[chimod(composable)]` module. `#[serde(…)]` attributes work on it
///   (`#[serde(default)]`, `#[serde(deny_unknown_fields)]`).
///
/// Put it above your other derives; `#[rkyv(…)]` attributes work too.
///
/// # Example
///
/// ```
/// use chimaera::prelude::*;
///
/// #[wire]
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// pub enum Shape {
///     Square { side: f64 },
///     Rect { width: f64, height: f64 },
/// }
///
/// #[chimod(name = "shapes", manifest = "../doc/wire.yaml")]
/// pub struct Shapes;
///
/// #[chimod(manifest = "../doc/wire.yaml")]
/// impl Shapes {
///     #[task(method = 0)]
///     fn create() -> Self {
///         Shapes
///     }
///
///     #[task(method = 10)]
///     fn area(&self, shape: Shape) -> f64 {
///         match shape {
///             Shape::Square { side } => side * side,
///             Shape::Rect { width, height } => width * height,
///         }
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = chimaera::builder().module::<Shapes>().start()?;
/// let shapes = ShapesClient::create(&runtime.client(), PoolQuery::local(), "shapes")?;
/// assert_eq!(shapes.area(PoolQuery::local(), Shape::Rect { width: 2.0, height: 3.0 })?, 6.0);
/// runtime.stop();
/// # Ok(())
/// # }
/// ```
#[proc_macro_attribute]
pub fn wire(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = attr::wire_args(&cx, args.into());
    let output = match expand::runtime_crate() {
        Ok(runtime) => wire::expand(&args, &runtime, input.into()),
        Err(message) => {
            cx.error_at(Span::call_site(), message);
            input.into()
        }
    };
    with_errors(output, cx.check()).into()
}

fn chimod_struct(args: TokenStream2, item: &syn::ItemStruct, env: &Env) -> TokenStream2 {
    let cx = Ctxt::new();
    let args = attr::struct_args(&cx, args);
    let model = model::ChimodStruct::from_syn(&cx, item, args);
    let written = model.args.manifest.as_ref().map(syn::LitStr::value);
    let location = manifest::locate(env, written.as_deref());
    // A manifest that cannot be read is reported once, by the impl's attribute (which
    // also reads it, and whose manifest must be this one).
    let module = manifest::read_module(&location).ok();
    let repo_location = manifest::find_repo(env, &location);
    let repo = match (&module, &repo_location) {
        (Some(_), Some(repo)) => {
            let at = model
                .args
                .manifest
                .as_ref()
                .map_or_else(Span::call_site, syn::LitStr::span);
            manifest::read_repo(repo)
                .map_err(|problems| manifest::report_at(&cx, at, problems))
                .ok()
        }
        _ => None,
    };
    validate::check_struct(&cx, &model, module.as_ref(), repo.as_ref());
    let mut output = match expand::runtime_crate() {
        Ok(runtime) => struct_items::expand(&model, &runtime, &location),
        Err(message) => {
            cx.error_at(Span::call_site(), message);
            item.into_token_stream()
        }
    };
    let repo_path = repo_location.as_ref().map(|r| r.path.as_path());
    output.extend(tracking::track(
        std::iter::once(location.path.as_path()).chain(repo_path),
    ));
    with_errors(output, cx.check())
}

fn chimod_impl(args: TokenStream2, item: &syn::ItemImpl, env: &Env) -> TokenStream2 {
    let cx = Ctxt::new();
    let args = attr::impl_args(&cx, args);
    let mut output = user_impl::expand(item);
    let Some(model) = model::ChimodImpl::from_syn(&cx, item, args) else {
        return with_errors(output, cx.check());
    };
    let written = model.args.manifest.as_ref().map(syn::LitStr::value);
    let location = manifest::locate(env, written.as_deref());
    let module = match manifest::read_module(&location) {
        Ok(module) => Some(module),
        Err(errors) => {
            let at = model
                .args
                .manifest
                .as_ref()
                .map_or_else(Span::call_site, syn::LitStr::span);
            manifest::report_at(&cx, at, errors);
            None
        }
    };
    let skipped = validate::check_impl(&cx, &model, module.as_ref());
    match expand::runtime_crate() {
        Ok(runtime) => {
            let names = Names::new(&runtime, &model.ident);
            let module_name = module
                .as_ref()
                .map_or_else(|| model.ident.to_string(), |m| m.module_name.value.clone());
            let check_span = model.args.manifest.as_ref().map_or_else(
                || syn::spanned::Spanned::span(&item.self_ty),
                syn::LitStr::span,
            );
            output.extend(method_table::expand(&model, &names, &module_name));
            output.extend(dispatch::expand(&model, &names, module.as_ref()));
            output.extend(client::expand(&model, &names, &module_name, &skipped));
            output.extend(compose::expand(&model, &names));
            output.extend(tracking::same_manifest(
                &names,
                &item.self_ty,
                &location,
                check_span,
            ));
            output.extend(tracking::track([location.path.as_path()]));
        }
        Err(message) => cx.error_at(Span::call_site(), message),
    }
    with_errors(output, cx.check())
}

fn with_errors(mut output: TokenStream2, checked: Result<(), syn::Error>) -> TokenStream2 {
    if let Err(error) = checked {
        output.extend(error.to_compile_error());
    }
    output
}

fn with_error(output: TokenStream2, error: syn::Error) -> TokenStream2 {
    with_errors(output, Err(error))
}
