//! The login gate: password checks are expensive on purpose (an argon2 check holds several MiB
//! and milliseconds of a core), so they run on a fixed set of threads, one per core, and wait
//! in a bounded queue for one of them. A flood of CONNECTs with wrong passwords then costs at
//! most `cores` checks' memory at a time, and is answered "server busy" beyond what the queue
//! holds, instead of taking the machine's memory.
//!
//! Fairness: the queue is served round-robin between sources (an IPv4 address, an IPv6 /64),
//! so one address flooding the gate delays a client from another address by about one check
//! per busy source, not by its whole backlog. When the queue is full, a newcomer from a source
//! with fewer waiting checks than the busiest one takes that source's newest place (which is
//! refused as busy), so a flood cannot lock other addresses out either.
//!
//! Dedicated threads rather than `spawn_blocking`: the blocking pool grows to hundreds of
//! threads, each of which may keep an allocator arena holding a check's memory.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Why a check did not run (or did not finish).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("too many password checks waiting (auth.max_pending_auth)")]
    QueueFull,
    #[error("waited longer than auth.pending_timeout for a password check")]
    TimedOut,
    #[error("the password check panicked")]
    Panicked,
    #[error("the broker is stopping")]
    Closed,
}

/// Whom the queue is fair between: an IPv4 address, or an IPv6 /64 (one host's usual share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
        }
    }
}

type Task<T> = Box<dyn FnOnce() -> T + Send>;

struct Job<T> {
    id: u64,
    task: Task<T>,
    reply: oneshot::Sender<Result<T, GateError>>,
}

struct Queue<T> {
    by_source: HashMap<Source, VecDeque<Job<T>>>,
    /// Sources with waiting jobs, in serving order.
    rotation: VecDeque<Source>,
    waiting: usize,
    next_id: u64,
    closed: bool,
}

impl<T> Queue<T> {
    fn pop_next(&mut self) -> Option<Job<T>> {
        let source = self.rotation.pop_front()?;
        let jobs = self.by_source.get_mut(&source)?;
        let job = jobs.pop_front()?;
        if jobs.is_empty() {
            self.by_source.remove(&source);
        } else {
            self.rotation.push_back(source);
        }
        self.waiting -= 1;
        Some(job)
    }

    fn push(&mut self, source: Source, job: Job<T>) {
        let jobs = self.by_source.entry(source).or_default();
        if jobs.is_empty() {
            self.rotation.push_back(source);
        }
        jobs.push_back(job);
        self.waiting += 1;
    }

    /// Removes a job still waiting; false if a worker took it (or it was evicted).
    fn withdraw(&mut self, source: Source, id: u64) -> bool {
        let Some(jobs) = self.by_source.get_mut(&source) else {
            return false;
        };
        let Some(at) = jobs.iter().position(|job| job.id == id) else {
            return false;
        };
        jobs.remove(at);
        if jobs.is_empty() {
            self.forget(source);
        }
        self.waiting -= 1;
        true
    }

    fn forget(&mut self, source: Source) {
        self.by_source.remove(&source);
        self.rotation.retain(|s| *s != source);
    }

    /// Makes room for `source` in a full queue at the expense of the source with the most
    /// waiting jobs, if it has more than `source` would after joining.
    fn evict_for(&mut self, source: Source) -> bool {
        let mine = self.by_source.get(&source).map_or(0, VecDeque::len);
        let Some((&busiest, count)) = self
            .by_source
            .iter()
            .map(|(s, jobs)| (s, jobs.len()))
            .max_by_key(|(_, n)| *n)
        else {
            return false;
        };
        if count <= mine + 1 {
            return false;
        }
        let Some(jobs) = self.by_source.get_mut(&busiest) else {
            return false;
        };
        if let Some(evicted) = jobs.pop_back() {
            let _ = evicted.reply.send(Err(GateError::QueueFull));
            self.waiting -= 1;
        }
        if jobs.is_empty() {
            self.forget(busiest);
        }
        true
    }
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    wake: Condvar,
    max_pending: usize,
    timeout: Duration,
}

impl<T> Shared<T> {
    // A panic while the lock is held cannot leave the queue unusable for memory safety's sake;
    // serving on beats refusing every later login.
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs tasks on `workers` threads, at most that many at once, fairly between sources.
pub struct Gate<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    workers: usize,
}

impl<T: Send + 'static> Gate<T> {
    /// `workers` threads (at least one); up to `max_pending` tasks wait, each at most `timeout`.
    pub fn new(workers: usize, max_pending: usize, timeout: Duration) -> std::io::Result<Gate<T>> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                by_source: HashMap::new(),
                rotation: VecDeque::new(),
                waiting: 0,
                next_id: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            max_pending,
            timeout,
        });
        let workers = workers.max(1);
        for n in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("brokk-auth-{n}"))
                .spawn(move || work(&shared))?;
        }
        Ok(Gate { shared, workers })
    }

    /// One thread per core.
    pub fn per_core(max_pending: usize, timeout: Duration) -> std::io::Result<Gate<T>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Gate::new(cores, max_pending, timeout)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Tasks waiting for a thread.
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }

    /// Runs `task` on a gate thread once one is free and it is `peer`'s turn.
    pub async fn run<F>(&self, peer: IpAddr, task: F) -> Result<T, GateError>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let source = Source::of(peer);
        let deadline = Instant::now() + self.shared.timeout;
        let (reply, mut answer) = oneshot::channel();
        let id = {
            let mut queue = self.shared.lock();
            if queue.closed {
                return Err(GateError::Closed);
            }
            if queue.waiting >= self.shared.max_pending && !queue.evict_for(source) {
                return Err(GateError::QueueFull);
            }
            let id = queue.next_id;
            queue.next_id += 1;
            let task = Box::new(task);
            queue.push(source, Job { id, task, reply });
            id
        };
        self.shared.wake.notify_one();
        // Withdraws the job if this future is dropped while it waits (the client went away).
        let _withdraw = Withdraw {
            shared: &self.shared,
            source,
            id,
        };
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answer) => answer.unwrap_or(Err(GateError::Closed)),
            Err(_) => {
                if self.shared.lock().withdraw(source, id) {
                    return Err(GateError::TimedOut);
                }
                // A thread took it at the last moment: its answer follows shortly.
                answer.await.unwrap_or(Err(GateError::Closed))
            }
        }
    }
}

impl<T: Send + 'static> Drop for Gate<T> {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.closed = true;
        // Waiters get Closed as their reply senders drop.
        queue.by_source.clear();
        queue.rotation.clear();
        queue.waiting = 0;
        drop(queue);
        self.shared.wake.notify_all();
    }
}

struct Withdraw<'a, T> {
    shared: &'a Shared<T>,
    source: Source,
    id: u64,
}

impl<T> Drop for Withdraw<'_, T> {
    fn drop(&mut self) {
        self.shared.lock().withdraw(self.source, self.id);
    }
}

/// A gate thread: takes the next job in turn, runs it, answers; ends when the gate is dropped.
fn work<T>(shared: &Shared<T>) {
    loop {
        let job = {
            let mut queue = shared.lock();
            loop {
                if queue.closed {
                    return;
                }
                if let Some(job) = queue.pop_next() {
                    break job;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        if job.reply.is_closed() {
            continue;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(job.task)).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %message, "password check panicked; the login is refused as server unavailable");
            GateError::Panicked
        });
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests;
