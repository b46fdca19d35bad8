//! # Write your first chimod
//!
//! A chimod is a module of tasks that a chimaera runtime serves: a *container* (the
//! state of one instance), its *tasks* (methods that clients call, locally or from
//! other processes), and a *manifest* that fixes each task's method id. This guide
//! builds `notes`, a module that keeps a list of text notes, and everything below is
//! compiled and run as this page's test.
//!
//! ## 1. One dependency
//!
//! ```toml
//! [dependencies]
//! chimaera = "0.1"
//! ```
//!
//! `chimaera` brings the macros, the runtime, and the wire format (rkyv) and serde the
//! generated code uses: nothing else goes into your `Cargo.toml`.
//!
//! ## 2. The manifest
//!
//! `chimaera_mod.yaml`, next to `Cargo.toml` (here `src/guide/notes.yaml`, named by
//! `manifest = "…"`): the module's name, its namespace, and one `kName: id` line per
//! task. Ids 0–9 are inherited (`kCreate: 0` builds a container; `-1` means "not
//! implemented"); your own tasks start at 10.
//!
#![doc = concat!("```yaml\n", include_str!("guide/notes.yaml"), "```")]
//!
//! The manifest is checked while your code compiles: a task missing from it, an id that
//! differs, or an entry without a task is a compile error pointing at your code and
//! naming the manifest's line. `chimaera repo check` checks a whole repository.
//!
//! ## 3. The code
//!
//! * `#[wire]` on a type of your own makes it a task argument or output;
//!   `#[wire(compose)]` also lets it be read from YAML.
//! * `#[chimod(name = "…")]` on the container struct. Tasks run concurrently on the
//!   runtime's workers and get `&self`, so mutable state is `Sync`: atomics, a
//!   `std::sync::Mutex` held for a moment and never across a wait (as here), or a
//!   [`CoMutex`](crate::CoMutex) when the critical section itself waits (its waits
//!   park the task, not the worker thread).
//! * `#[chimod]` on the impl block; `#[task(method = N)]` on each task, with `N` from
//!   the manifest. `create` (method 0) has no `self` and returns the container.
//!   Arguments are the inputs, the return value the output, `Result<_, TaskError>` a
//!   possible failure. [`macro@crate::task`] lists every argument and return form;
//!   [`macro@crate::chimod`] every key.
//!
//! The macros generate the typed client `NotesClient`: for each task `fn add`, a
//! method `add` that waits for the output, `async_add` that returns a [`Pending`](crate::Pending)
//! to wait on later, and `spawn_add` for fire-and-forget or periodic calls.
//!
//! ```
//! use chimaera::prelude::*;
//! use std::sync::Mutex;
//!
//! /// How a pool of notes is created (also readable from a `compose:` entry).
//! #[wire(compose)]
//! #[derive(Clone, Debug, PartialEq)]
//! pub struct NotesParams {
//!     /// Most notes one container keeps.
//!     pub capacity: u32,
//! }
//!
//! /// One container: its notes.
//! #[chimod(name = "notes", manifest = "guide/notes.yaml")]
//! pub struct Notes {
//!     capacity: usize,
//!     notes: Mutex<Vec<String>>,
//! }
//!
//! #[chimod(manifest = "guide/notes.yaml", composable)]
//! impl Notes {
//!     #[task(method = 0)]
//!     fn create(params: NotesParams) -> Result<Self, TaskError> {
//!         if params.capacity == 0 {
//!             return Err(TaskError::failed("capacity must be at least 1"));
//!         }
//!         Ok(Notes {
//!             capacity: params.capacity as usize,
//!             notes: Mutex::new(Vec::new()),
//!         })
//!     }
//!
//!     /// Keeps `text`; returns how many notes there are now.
//!     #[task(method = 10)]
//!     fn add(&self, text: &str) -> Result<u32, TaskError> {
//!         let mut notes = self.notes.lock().map_err(|_| TaskError::failed("poisoned"))?;
//!         if notes.len() == self.capacity {
//!             return Err(TaskError::failed("the notes are full; remove some first"));
//!         }
//!         notes.push(text.to_owned());
//!         Ok(notes.len() as u32)
//!     }
//!
//!     /// Every note, oldest first.
//!     #[task(method = 11)]
//!     fn list(&self) -> Result<Vec<String>, TaskError> {
//!         Ok(self.notes.lock().map_err(|_| TaskError::failed("poisoned"))?.clone())
//!     }
//!
//!     /// How many notes there are; the task's context is optional, and first.
//!     #[task(method = 12)]
//!     fn count(&self, ctx: &mut RunContext) -> Result<u32, TaskError> {
//!         let _pool = ctx.pool_id();
//!         Ok(self.notes.lock().map_err(|_| TaskError::failed("poisoned"))?.len() as u32)
//!     }
//! }
//!
//! // 4. A runtime with the module linked, and a client calling it. Here both live in
//! //    this process; `chimaera::Client::connect()` reaches a runtime process instead.
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = chimaera::builder().composable_module::<Notes>().start()?;
//! let chi = runtime.client();
//! let notes = NotesClient::create(&chi, PoolQuery::local(), "todo", NotesParams { capacity: 2 })?;
//! assert_eq!(notes.add(PoolQuery::local(), "write a chimod")?, 1);
//! let pending = notes.async_add(PoolQuery::local(), "run it")?;
//! assert_eq!(pending.wait()?, 2);
//! assert!(notes.add(PoolQuery::local(), "one too many").is_err());
//! assert_eq!(notes.list(PoolQuery::local())?, ["write a chimod", "run it"]);
//!
//! // 5. Pools from YAML: what a `compose:` entry of the runtime's config does.
//! let config = RuntimeConfig::from_yaml_str(
//!     "compose:\n  - module: notes\n    name: shopping\n    params: { capacity: 10 }\n",
//! )?;
//! for pool in chimaera::compose::prepare(chimaera::builder().composable_module::<Notes>().modules(), &config.compose)? {
//!     pool.create(&chi)?;
//! }
//! let shopping = NotesClient::create(&chi, PoolQuery::local(), "shopping", NotesParams { capacity: 10 })?;
//! assert_eq!(shopping.count(PoolQuery::local())?, 0);
//! runtime.stop();
//! # Ok(())
//! # }
//!
//! /// 6. Your runtime binary: the `chimaera` command line (`runtime start`, `compose`,
//! /// `repo check`, …) with your module linked.
//! fn runtime_main() -> std::process::ExitCode {
//!     chimaera::cli::main_with(chimaera::binary!(), chimaera::builder().composable_module::<Notes>())
//! }
//! ```
//!
//! ## What next
//!
//! * Byte buffers without copies: `BulkIn` / `BulkOut` arguments, and
//!   [`Client::allocate_buffer`](crate::Client::allocate_buffer) on the caller's side.
//! * Routing: `#[task(route = …)]` picks a lane per call, `#[task(dynamic = …)]` a
//!   container; `PoolQuery` says which containers a call goes to.
//! * Tasks calling tasks: [`RunContext::client`](crate::RunContext::client) inside a task; waiting parks the
//!   task's coroutine, not the worker.
//! * The `MOD_NAME` module (`chimaera::mod_name`, with the default features) is a
//!   template to copy.
