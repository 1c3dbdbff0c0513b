//! Tasks that live and die together.
//!
//! A worker is several tasks (a runner per consumer, a cron loop, a request
//! listener, a sweep). If one of them panics or fails and the others go on, the
//! process looks healthy while part of it is gone: manual jobs stop silently while
//! the cron loop still fires. So every long-lived task of a process is spawned in a
//! [`Tasks`] group: the first task that fails or panics stops its siblings, and the
//! group returns an error that ends the process with a non-zero exit, for the
//! orchestrator to restart it. A panic is logged with its message and the task's
//! name before that.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// A task of the group ended the group.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task panicked.
    #[error("task {task} panicked: {message}")]
    Panicked {
        /// The task's name.
        task: String,
        /// The panic's message.
        message: String,
    },
    /// The task returned an error.
    #[error("task {task} failed")]
    Failed {
        /// The task's name.
        task: String,
        /// Why.
        #[source]
        source: anyhow::Error,
    },
    /// The task returned before shutdown was asked for, which a long-lived task
    /// never does.
    #[error("task {task} stopped before shutdown")]
    Stopped {
        /// The task's name.
        task: String,
    },
}

/// The message of a panic, when it has one (`panic!` with a string or a format).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// What a [`JoinError`] says: the panic's message, or that the task was cancelled.
pub fn join_error_message(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => panic_message(payload.as_ref()),
        Err(e) => e.to_string(),
    }
}

/// A group of named long-lived tasks sharing one shutdown token.
pub struct Tasks {
    set: JoinSet<Result<(), TaskError>>,
    shutdown: CancellationToken,
}

impl Tasks {
    /// A group stopped by `shutdown`, and by the first of its tasks to fail.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Tasks {
            set: JoinSet::new(),
            shutdown: shutdown.child_token(),
        }
    }

    /// The token the group's tasks stop on: cancelled at shutdown, and when a task
    /// of the group fails.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns `task` as `name`.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let task_name = name.into();
        let shutdown = self.shutdown.clone();
        self.set.spawn(async move {
            // Caught here rather than read from the JoinError, so the panic is
            // reported with the task's name.
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
                Ok(Ok(())) => Err(TaskError::Stopped { task: task_name }),
                Ok(Err(source)) => Err(TaskError::Failed {
                    task: task_name,
                    source,
                }),
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(task = %task_name, panic = %message, "task panicked; stopping the process");
                    Err(TaskError::Panicked {
                        task: task_name,
                        message,
                    })
                }
            }
        });
    }

    /// Whether the group has no task.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits for every task. The first to panic, fail or stop early cancels the
    /// others, which get their own grace period to finish; that first error is
    /// returned.
    pub async fn join(mut self) -> Result<(), TaskError> {
        let mut first = None;
        while let Some(joined) = self.set.join_next().await {
            let error = match joined {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                // Only an abort gets here (panics are caught in the task), and
                // nothing aborts the group's tasks but dropping the group.
                Err(e) => TaskError::Panicked {
                    task: String::new(),
                    message: join_error_message(e),
                },
            };
            if first.is_none() {
                tracing::error!(error = %crate::error_chain(&error), "stopping every task of the process");
                self.shutdown.cancel();
                first = Some(error);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
