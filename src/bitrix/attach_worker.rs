//! Recording attaches on a thread of their own, so that the delivery thread never waits
//! behind one: finding the file, reading it and uploading it can take minutes (a slow PBX
//! web server, a large file to a slow portal), and meanwhile ringing phones' cards must still
//! be shown and hidden.
//!
//! One attach at a time (one file in flight: memory stays bounded by what
//! [`super::record`] holds for one file). The delivery queue hands a due attach over only
//! when the worker is idle, keeps the call on hold while it runs, and settles the result like
//! any other step when it comes back; the worker wakes the delivery loop then.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TryRecvError};

use super::client::Transport;
use super::error::Error;
use super::record::{self, Progress};
use crate::config::RecordingConfig;

/// One attach to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: String,
    pub seq: u64,
    pub call_id: String,
    pub path: String,
    /// How long attempts for this call have been going on (`[recording] wait`).
    pub waited: Duration,
}

/// What one attach came to.
#[derive(Debug)]
pub struct Finished {
    pub key: String,
    pub seq: u64,
    pub result: Result<Progress, Error>,
}

pub struct AttachWorker {
    jobs: Sender<Job>,
    done: Receiver<Finished>,
    /// The job in flight.
    busy: Option<(String, u64)>,
    /// The thread ended (it should not: nothing in it panics on bad input).
    dead: bool,
}

impl AttachWorker {
    /// Start the thread. `transport` is the portal (rate-limited, like every request);
    /// `wake` is signalled after each attach so the delivery loop settles it at once.
    pub fn spawn(
        cfg: RecordingConfig,
        transport: Arc<dyn Transport>,
        wake: Option<Sender<()>>,
    ) -> io::Result<AttachWorker> {
        let (jobs_tx, jobs_rx) = bounded::<Job>(1);
        let (done_tx, done_rx) = unbounded::<Finished>();
        thread::Builder::new()
            .name("attach".into())
            .spawn(move || {
                for job in jobs_rx {
                    let result = record::attach(
                        &cfg,
                        transport.as_ref(),
                        &job.call_id,
                        &job.path,
                        job.waited,
                    );
                    let finished = Finished {
                        key: job.key,
                        seq: job.seq,
                        result,
                    };
                    if done_tx.send(finished).is_err() {
                        break;
                    }
                    if let Some(w) = &wake {
                        let _ = w.try_send(());
                    }
                }
                log::debug!("attach worker stopped");
            })?;
        Ok(AttachWorker {
            jobs: jobs_tx,
            done: done_rx,
            busy: None,
            dead: false,
        })
    }

    /// Whether a job can be handed over now.
    pub fn is_idle(&self) -> bool {
        self.busy.is_none() && !self.dead
    }

    /// Whether the thread is gone (the caller then attaches inline).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Hand `job` over; false if busy or gone.
    pub fn submit(&mut self, job: Job) -> bool {
        if !self.is_idle() {
            return false;
        }
        let id = (job.key.clone(), job.seq);
        if self.jobs.try_send(job).is_err() {
            self.dead = true;
            return false;
        }
        self.busy = Some(id);
        true
    }

    /// The finished job, if one is back. A thread that died with a job in flight gives that
    /// job back as a (retryable) failure, so the step is not lost.
    pub fn poll(&mut self) -> Option<Finished> {
        match self.done.try_recv() {
            Ok(f) => {
                self.busy = None;
                Some(f)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                if !self.dead {
                    log::error!("the recording attach thread died; attaching inline from now on");
                }
                self.dead = true;
                let (key, seq) = self.busy.take()?;
                Some(Finished {
                    key,
                    seq,
                    result: Err(Error::Transport("the attach thread died".into())),
                })
            }
        }
    }
}
