//! Task spans: every task runs inside a `tracing` span naming its pool, method and id,
//! entered while its handler runs, left while it waits, and entered again when it
//! resumes — so an event logged after a wait carries the task's span and no other task
//! of the worker runs inside it.
//!
//! A recording `Layer` (installed as the process's global subscriber, which the worker
//! threads see) notes every span's fields and, in order, every enter, exit and event
//! with the span current at that moment. An in-process runtime serves a probe pool:
//! task H holds the pool's `CoMutex` until the test releases it; task L waits on that
//! mutex, then logs. One test per file: the subscriber is process-wide.
mod probe;

use chimaera::prelude::*;
use probe::{ProbeClient, GUARD_HELD, RELEASE_GUARD};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Enter(u64),
    Exit(u64),
    /// An event's message and the span current when it was logged.
    Event(String, Option<u64>),
}

#[derive(Default)]
struct Record {
    /// Each span's name and fields, by id.
    spans: HashMap<u64, (String, HashMap<String, String>)>,
    steps: Vec<Step>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Record>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.lock()
            .spans
            .insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        self.lock().steps.push(Step::Enter(id.into_u64()));
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        self.lock().steps.push(Step::Exit(id.into_u64()));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let current = ctx.lookup_current().map(|span| span.id().into_u64());
        let message = fields.remove("message").unwrap_or_default();
        self.lock().steps.push(Step::Event(message, current));
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The id of the task span whose `method` field is `method`, once there is one.
    fn span_of(&self, method: &str) -> Option<u64> {
        self.lock()
            .spans
            .iter()
            .find(|(_, (name, fields))| {
                name == "task" && fields.get("method").map(String::as_str) == Some(method)
            })
            .map(|(id, _)| *id)
    }

    fn fields(&self, span: u64) -> HashMap<String, String> {
        self.lock().spans[&span].1.clone()
    }

    fn steps(&self) -> Vec<Step> {
        self.lock().steps.clone()
    }
}

/// Lets H go when dropped: a failed assertion then ends the test instead of hanging in
/// the drop of L's `Pending` (which waits for L, which waits for H's mutex).
struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        RELEASE_GUARD.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `ready` holds; the bound only turns a hang into a failure.
fn wait_for<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_task_span_is_entered_again_after_a_wait_on_a_co_mutex_and_carries_the_events_after_it() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .expect("no other subscriber in this test process");

    let runtime = chimaera::builder()
        .module::<probe::Probe>()
        .start()
        .expect("runtime starts");
    let chi = runtime.client();
    let pool = ProbeClient::create_with(
        &chi,
        PoolQuery::local(),
        "traced",
        chimaera::admin_api::PoolOptions::containers(1),
    )
    .expect("probe pool");

    let holder = pool.async_hold_guard(PoolQuery::local()).expect("submit H");
    wait_for("H holds the mutex", || {
        GUARD_HELD.load(Ordering::SeqCst).then_some(())
    });
    let logger = pool
        .async_log_after_lock(PoolQuery::local(), 7)
        .expect("submit L");
    let _release_on_failure = ReleaseOnDrop;
    let held_span = recorder
        .span_of("kHoldGuard")
        .expect("H runs in a task span");
    let logger_span = wait_for("L runs in a task span", || {
        recorder.span_of("kLogAfterLock")
    });
    // L left its span when it parked on the mutex H holds.
    wait_for("L waits on the mutex", || {
        recorder
            .steps()
            .contains(&Step::Exit(logger_span))
            .then_some(())
    });
    RELEASE_GUARD.store(true, Ordering::SeqCst);
    holder.wait().expect("H ends");
    assert_eq!(logger.wait().expect("L ends"), 7);
    drop(pool);
    runtime.stop();

    let fields = recorder.fields(logger_span);
    assert_eq!(fields.get("pool").map(String::as_str), Some("traced"));
    assert_eq!(fields.get("container").map(String::as_str), Some("0"));
    assert!(
        fields
            .get("task")
            .is_some_and(|id| id.parse::<u64>().is_ok()),
        "the span names its task id: {fields:?}"
    );
    assert_ne!(
        fields.get("task"),
        recorder.fields(held_span).get("task"),
        "each task has its own span"
    );

    let steps = recorder.steps();
    let after_wait = steps
        .iter()
        .position(
            |step| matches!(step, Step::Event(message, _) if message == "probe: after the wait"),
        )
        .expect("L logged after its wait");
    assert_eq!(
        steps[after_wait],
        Step::Event("probe: after the wait".into(), Some(logger_span)),
        "the event after the wait carries L's span"
    );
    let first_exit = steps
        .iter()
        .position(|step| *step == Step::Exit(logger_span))
        .expect("L left its span while it waited");
    assert!(first_exit < after_wait);
    assert!(
        steps[first_exit..after_wait].contains(&Step::Enter(logger_span)),
        "L entered its span again when it resumed, before logging: {steps:?}"
    );
    let released = steps
        .iter()
        .find(|step| matches!(step, Step::Event(message, _) if message == "probe: releasing the guard"))
        .expect("H logged");
    assert_eq!(
        *released,
        Step::Event("probe: releasing the guard".into(), Some(held_span)),
        "H ran in its own span while L waited, not in L's"
    );
    let (enters, exits) = steps
        .iter()
        .fold((0, 0), |(enters, exits), step| match step {
            Step::Enter(id) if *id == logger_span => (enters + 1, exits),
            Step::Exit(id) if *id == logger_span => (enters, exits + 1),
            _ => (enters, exits),
        });
    assert_eq!(enters, exits, "every enter of L's span has its exit");
}
