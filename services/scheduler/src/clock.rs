//! Time for the scheduler, injectable so tests can drive it across daylight-saving
//! changes without waiting for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now() >= t`.
    fn sleep_until(&self, t: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // Sleep in steps of at most a minute, so a wall-clock jump (NTP, a
            // suspended VM) delays a job by a minute at most.
            loop {
                let left = (t - Utc::now()).to_std().unwrap_or_default();
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(std::time::Duration::from_secs(60))).await;
            }
        })
    }
}

/// Pending sleeps of a [`ManualClock`]: each sleep's id and the instant it waits for.
type Sleepers = Arc<Mutex<Vec<(u64, DateTime<Utc>)>>>;

/// A clock that moves only when a test says so.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: watch::Sender<DateTime<Utc>>,
    /// The instants pending `sleep_until`s wait for, by sleep: lets a test wait
    /// until the scheduler has handled everything due instead of sleeping.
    sleepers: Sleepers,
    next_sleeper: AtomicU64,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Mutex::new(start),
            moved: watch::channel(start).0,
            sleepers: Arc::default(),
            next_sleeper: AtomicU64::new(0),
        }
    }

    /// Whether whoever uses the clock has handled everything due by now: someone
    /// sleeps, and every sleep waits for a later instant. After [`set`](Self::set),
    /// the scheduler has fired (and published) every job due once this is true.
    pub fn caught_up(&self) -> bool {
        let now = self.now();
        let sleepers = self.sleepers.lock().expect("clock lock");
        !sleepers.is_empty() && sleepers.iter().all(|(_, t)| *t > now)
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.now.lock().expect("clock lock") = t;
        self.moved.send_replace(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock")
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut moved = self.moved.subscribe();
        let id = self.next_sleeper.fetch_add(1, Ordering::Relaxed);
        self.sleepers.lock().expect("clock lock").push((id, t));
        // Unregisters when the sleep ends or is dropped (a `select!` took another arm).
        let registered = Sleeper {
            id,
            sleepers: self.sleepers.clone(),
        };
        Box::pin(async move {
            let _registered = registered;
            while *moved.borrow_and_update() < t {
                if moved.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// A pending `ManualClock::sleep_until`, removed from the clock's list on drop.
struct Sleeper {
    id: u64,
    sleepers: Sleepers,
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        if let Ok(mut sleepers) = self.sleepers.lock() {
            sleepers.retain(|(id, _)| *id != self.id);
        }
    }
}
