//! `chimaera pool list|info NAME|destroy NAME`.
//!
//! Every verb reads the pools from the admin `Status`; `destroy` then sends the admin
//! `DestroyPool` task for the pool's id, like any client would, so the runtime's rules
//! apply (tasks queued for the pool fail with `PoolDestroyed`, running ones finish, the
//! containers' `kDestroy` runs; admin rights are checked for other users).
use super::status::{fetch, for_display, methods_of, print_methods, print_pools, shown};
use super::{fail, Context, FAILED};
use crate::admin::AdminClient;
use chimaera_core::admin_api::{PoolInfo, RuntimeStatus};
use chimaera_core::{PoolId, PoolQuery};
use std::process::ExitCode;

/// The running runtime's status, or the exit code after saying why there is none.
fn status(context: &Context) -> Result<RuntimeStatus, ExitCode> {
    let config = context.config()?;
    fetch(context, &config)
}

/// The pool named `name` in `status`, or the exit code after saying there is none.
fn find<'a>(
    context: &Context,
    status: &'a RuntimeStatus,
    name: &str,
) -> Result<&'a PoolInfo, ExitCode> {
    status
        .pools
        .iter()
        .find(|pool| pool.name == name)
        .ok_or_else(|| {
            fail(
                FAILED,
                format!(
                    "runtime `{}` has no pool named `{name}`; `{} pool list` shows its pools",
                    status.instance,
                    context.binary().name()
                ),
            )
        })
}

/// `pool list`.
pub(super) fn list(context: &Context) -> ExitCode {
    match status(context) {
        Ok(status) => {
            println!("pools: {}", status.pools.len());
            print_pools(&for_display(status));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `pool info NAME`.
pub(super) fn info(context: &Context, name: &str) -> ExitCode {
    let status = match status(context) {
        Ok(status) => status,
        Err(code) => return code,
    };
    let found = match find(context, &status, name) {
        Ok(pool) => pool.clone(),
        Err(code) => return code,
    };
    let status = for_display(status);
    let pool = &PoolInfo {
        name: shown(&found.name),
        module: shown(&found.module),
        ..found
    };
    let private = pool
        .private_to
        .map(|uid| format!(", private to uid {uid}"))
        .unwrap_or_default();
    println!(
        "pool `{}` ({}): module {}, {} container(s), {} queued{private}",
        pool.name, pool.id, pool.module, pool.containers, pool.queued
    );
    for container in status.containers.iter().filter(|c| c.pool == pool.id) {
        println!("  container {}", container.container);
        for (id, lane) in container.lanes.iter().enumerate() {
            println!(
                "    lane {id}: worker {}, {}, {} queued",
                lane.worker,
                if lane.high_latency {
                    "high latency"
                } else {
                    "low latency"
                },
                lane.queued
            );
        }
    }
    println!("  methods:");
    print_methods(&status, pool, "    ");
    let idle: Vec<&str> = methods_of(&status, pool.id)
        .filter(|method| method.latency.count + method.in_flight == 0)
        .map(|method| method.name.as_str())
        .collect();
    if !idle.is_empty() {
        println!("    not run yet: {}", idle.join(", "));
    }
    ExitCode::SUCCESS
}

/// `pool destroy NAME`.
pub(super) fn destroy(context: &Context, name: &str) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let status = match fetch(context, &config) {
        Ok(status) => status,
        Err(code) => return code,
    };
    let pool = match find(context, &status, name) {
        Ok(pool) => pool.clone(),
        Err(code) => return code,
    };
    if pool.id == PoolId::ADMIN {
        return fail(
            FAILED,
            format!(
                "pool `{name}` is the runtime's own admin pool; stop the runtime with `{} runtime stop` instead",
                context.binary().name()
            ),
        );
    }
    let client = match context.connect_to(&config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    match AdminClient::attach(&client, PoolId::ADMIN).destroy_pool(PoolQuery::Local, pool.id) {
        Ok(()) => {
            println!("pool `{name}` ({}) destroyed", pool.id);
            ExitCode::SUCCESS
        }
        Err(err) => fail(
            FAILED,
            format!("pool `{name}` ({}) not destroyed: {err}", pool.id),
        ),
    }
}
