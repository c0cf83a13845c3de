//! Reservations of one (tenant, kind) go to PostgreSQL in groups: the first request starts a task
//! that decides every request waiting for that (tenant, kind) in one transaction, then the ones
//! that arrived meanwhile, until none waits. A burst of 200 invites is a handful of transactions
//! instead of 200 waits on one advisory lock, so it is answered rather than timed out.
//!
//! The transaction runs in its own task, never inside the request's future: a caller that goes
//! away (a client timeout, a dropped connection) cannot cancel it halfway and hand its connection
//! back to the pool mid-transaction. Its waits are bounded by PostgreSQL ([`crate::reservations`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::rate::TenantKey;
use crate::reservations::{self, Bounds, Judged, Reserved, Resource};

/// Most requests decided in one transaction.
const MAX_GROUP: usize = 1_000;

struct Waiting {
    amount: u64,
    judged: Judged,
    reply: oneshot::Sender<Result<Reserved, String>>,
}

type Queues = HashMap<(TenantKey, Resource), Vec<Waiting>>;

/// The reservation queues, one per (tenant, kind) with requests in flight.
pub struct Holds {
    pool: PgPool,
    bounds: Bounds,
    /// A key is present while its task runs (possibly with nothing waiting): requests arriving
    /// then join the queue instead of starting a second task.
    queues: Mutex<Queues>,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").field("bounds", &self.bounds).finish_non_exhaustive()
    }
}

impl Holds {
    pub fn new(pool: PgPool, bounds: Bounds) -> Arc<Self> {
        Arc::new(Self { pool, bounds, queues: Mutex::new(HashMap::new()) })
    }

    /// Reserves `amount` for `tenant` against `judged`; an error is PostgreSQL's, as text.
    pub async fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        resource: Resource,
        amount: u64,
        judged: Judged,
    ) -> Result<Reserved, String> {
        let (reply, answer) = oneshot::channel();
        let key = (TenantKey::from(tenant), resource);
        let start_task = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            match queues.get_mut(&key) {
                Some(waiting) => {
                    waiting.push(Waiting { amount, judged, reply });
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![Waiting { amount, judged, reply }]);
                    true
                }
            }
        };
        if start_task {
            tokio::spawn(Arc::clone(self).drain(key));
        }
        answer.await.unwrap_or_else(|_| Err("the reservation task stopped".to_owned()))
    }

    async fn drain(self: Arc<Self>, key: (TenantKey, Resource)) {
        loop {
            let group = {
                let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(waiting) = queues.get_mut(&key) else { return };
                if waiting.is_empty() {
                    queues.remove(&key);
                    return;
                }
                let take = waiting.len().min(MAX_GROUP);
                waiting.drain(..take).collect::<Vec<_>>()
            };
            // The newest request's view of usage is the freshest.
            let Some(judged) = group.last().map(|w| w.judged) else { continue };
            let amounts: Vec<u64> = group.iter().map(|w| w.amount).collect();
            let (tenant, resource) = (&key.0, key.1);
            match reservations::reserve_group(&self.pool, tenant, resource, judged, self.bounds, &amounts).await {
                Ok(answers) => {
                    for (waiting, answer) in group.into_iter().zip(answers) {
                        let _gone = waiting.reply.send(Ok(answer));
                    }
                }
                Err(error) => {
                    tracing::warn!(tenant = &**tenant, kind = resource.as_str(), error = %error, "reserving failed");
                    let message = error.to_string();
                    for waiting in group {
                        let _gone = waiting.reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}
