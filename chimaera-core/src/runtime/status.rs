//! The admin `Status` snapshot of a runtime ([`RuntimeHandle::status`]) and the
//! per-method counters exporters read ([`RuntimeHandle::method_stats`]), read off the
//! runtime's state.
//!
//! A snapshot is read without stopping anything: each counter, lane length and pool
//! list is read once at some moment during the call, so totals taken in one snapshot may
//! disagree by the tasks that moved meanwhile (never by more). The `Status` task leaves
//! itself out: its own task is not counted in flight (in the total or in its method's
//! count), and when it came from a client over shared memory, that client and its
//! client area are not counted as attached. A caller without admin rights sees its own
//! uid alone among the uids and no pool private to another uid.
use super::context::{Host, StatusCaller};
use super::module::LanePriority;
use super::Shared;
use crate::admin_api::{
    ContainerStatus, LaneStatus, MethodStatus, NodeStatus, QuotaUse, RuntimeStatus, ShmStatus,
    UidStatus,
};
use crate::runtime::task::lock;

impl Shared {
    /// A snapshot of the runtime for the admin `Status` task `caller`, which leaves
    /// itself out (see the module docs).
    pub(crate) fn status(&self, caller: StatusCaller) -> RuntimeStatus {
        let StatusCaller {
            pool: own_pool,
            method: own_method,
            from_shm_client,
            unprivileged,
        } = caller;
        let mut entries = self.pools.list();
        entries.retain(|entry| entry.pool.check_caller(unprivileged).is_ok());
        let mut uids = self.uid_statuses();
        if let Some(uid) = unprivileged {
            uids.retain(|status| status.uid == uid);
        }
        let mut containers = Vec::new();
        let mut methods = Vec::new();
        for entry in &entries {
            let pool = &entry.pool;
            // Containers held by other nodes have no lanes here.
            for (id, lanes) in entry.lanes.iter().enumerate() {
                if lanes.is_empty() {
                    continue;
                }
                containers.push(ContainerStatus {
                    pool: pool.id,
                    container: id as u32,
                    lanes: lanes
                        .iter()
                        .map(|lane| LaneStatus {
                            worker: lane.worker() as u32,
                            high_latency: lane.priority() == LanePriority::HighLatency,
                            queued: lane.len() as u64,
                        })
                        .collect(),
                });
            }
            let exclude = (pool.id == own_pool).then_some((own_method, 1));
            methods.extend(pool.stats.snapshot(pool.id, exclude));
        }
        let config = &self.config;
        let usage = self.shm_server().map(|server| server.usage());
        let max_clients = u64::from(config.max_clients);
        let per_client = [
            config.shm.main_size,
            config.shm.client_data_size,
            config.shm.runtime_data_size,
        ]
        .iter()
        .map(|size| *size as u64 / max_clients.max(1))
        .sum::<u64>();
        // The asking client's own area is left out with the client.
        let areas = usage
            .map_or(0, |usage| usage.client_areas_in_use)
            .saturating_sub(u32::from(from_shm_client));
        RuntimeStatus {
            pid: std::process::id(),
            instance: config.instance.to_string(),
            workers: Host::workers(self),
            pools: entries.iter().map(|entry| entry.info()).collect(),
            inflight: Host::inflight(self).saturating_sub(1),
            completed: Host::completed(self),
            clients: Host::clients(self).saturating_sub(u32::from(from_shm_client)),
            periodic: Host::periodic_tasks(self),
            coroutines: Host::coroutines(self),
            uids,
            containers,
            methods,
            shm: ShmStatus {
                serving: usage.is_some(),
                max_clients: config.max_clients,
                main_size: config.shm.main_size as u64,
                client_data_size: config.shm.client_data_size as u64,
                runtime_data_size: config.shm.runtime_data_size as u64,
                per_client_bytes: per_client,
                client_areas_in_use: areas,
                committed_bytes: per_client.saturating_mul(u64::from(areas)),
                output_bytes_in_use: usage.map_or(0, |usage| usage.output_bytes_in_use),
            },
            node: Host::node(self),
            nodes: nodes_in_id_order(Host::peers(self))
                .into_iter()
                .map(|peer| NodeStatus {
                    node: peer.node,
                    address: peer.address,
                    state: peer.state,
                })
                .collect(),
        }
    }

    /// What each uid with quotas holds against them (see `crate::quota`), in uid order.
    pub(crate) fn uid_statuses(&self) -> Vec<UidStatus> {
        // Connections first: the server's table lock is never taken inside `periodic`'s.
        let server = self.shm_server();
        let uids: Vec<_> = self
            .uids
            .all()
            .into_iter()
            .map(|quotas| {
                // A node serving no client process has none (and takes none).
                let connections = server
                    .map(|server| server.connections_of(quotas.uid()))
                    .unwrap_or_default();
                (quotas, connections)
            })
            .collect();
        let periodic = lock(&self.periodic);
        uids.iter()
            .map(|(quotas, connections)| {
                let alive = super::PeriodicEntry::alive_of(&periodic, quotas);
                let usage = quotas.usage();
                let quota = |(used, max): (u64, u64)| QuotaUse { used, max };
                UidStatus {
                    uid: quotas.uid(),
                    connections: *connections,
                    waiting_tasks: quota(usage.waiting_tasks),
                    periodic_tasks: quota((alive as u64, usage.max_periodic_tasks)),
                    containers: quota(usage.containers),
                    memory_bytes: quota(usage.memory_bytes),
                    stack_overflows: quota(usage.stack_overflows),
                }
            })
            .collect()
    }

    /// Every pool's per-method counters (for exporters; nothing left out).
    pub(crate) fn method_stats(&self) -> Vec<MethodStatus> {
        self.pools
            .list()
            .iter()
            .flat_map(|entry| entry.pool.stats.snapshot(entry.pool.id, None))
            .collect()
    }
}

/// `peers` sorted by node id (a network lists them in its own order).
fn nodes_in_id_order(mut peers: Vec<crate::peer::PeerInfo>) -> Vec<crate::peer::PeerInfo> {
    peers.sort_by_key(|peer| peer.node);
    peers
}
