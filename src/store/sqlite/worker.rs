//! The SQLite store's threads and their queues: one writer that commits in
//! groups, reader threads, and a checkpointer.
//!
//! Async callers only await a bounded queue and a reply, so a full queue slows
//! callers down instead of growing without bound. The one exception is small
//! reads (`read_small`: a thread, a page of threads, an item, a session), which
//! run on the caller's own thread on one of a few connections kept for that
//! when one is free: a WAL reader waits for no lock, so such a read takes
//! microseconds of CPU, less than the two thread switches of a hop to a
//! reader thread and back would.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::connection::{open_existing, open_writer};
use super::store::{execute, query_value};
use crate::store::{StoreError, StoreResult};

/// Reader threads for a database file. Reads are short, so a few connections
/// keep the cores busy even while one of them waits on the disk.
pub(super) const READERS: usize = 4;

/// Connections for small reads on the callers' own threads: one per core is
/// what can be in use at once on the HTTP workers, and more only sit idle.
const INLINE_READERS: usize = 2;

/// How long a small read on a caller's thread waits for a lock before it
/// fails. A WAL reader takes none the writer or a checkpoint holds for long;
/// this bounds the rare wait (another process recovering the WAL) on a thread
/// that serves requests.
const INLINE_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// Jobs that may wait in each queue. A caller that finds its queue full waits
/// for room, which slows the request side down to what the database sustains.
const QUEUE_CAPACITY: usize = 1024;

/// The most writes one transaction takes. A cap keeps the first writer of a
/// long queue from waiting for the whole queue to be executed before its commit.
const MAX_BATCH: usize = 256;

/// How often, at most, the writer wakes the checkpointer while commits come in.
/// Each wake-up is one checkpoint: less often copies a page rewritten several
/// times only once, more often keeps the WAL short. Each checkpoint also syncs
/// the WAL and the database file, which costs this machine's disk about as much
/// CPU as the copying: at 20 ms, the checkpointer took some 13 µs of CPU per
/// echo turn under load, at 100 ms about 7 µs.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// What the caller of a job sees when the thread that should answer has gone.
const STOPPED: &str = "sqlite worker stopped";

/// What a connection thread is asked to do.
enum Command {
    Run(Box<dyn Job>),
    /// Ends the thread once the commands queued before it are answered.
    Stop,
}

/// Work for a connection thread, with a caller waiting for its result.
trait Job: Send {
    /// Runs the work on the thread's connection and keeps its result.
    fn run(&mut self, conn: &Connection);
    /// Replaces a success (or a result never computed) with an error, because
    /// the transaction that held the work did not commit.
    fn fail(&mut self, message: &str);
    /// Sends the kept result to the caller.
    fn answer(self: Box<Self>);
}

/// A closure to run on a connection and the channel its result goes back on.
struct Call<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.result = Some(work(conn));
        }
    }

    fn fail(&mut self, message: &str) {
        // A statement that failed changed nothing, so its own error stays true
        // whatever became of the transaction around it.
        if !matches!(self.result, Some(Err(_))) {
            self.result = Some(Err(StoreError::Backend(message.to_owned())));
        }
    }

    fn answer(self: Box<Self>) {
        let Call { result, reply, .. } = *self;
        let result = result.unwrap_or_else(|| Err(StoreError::Backend("a sqlite job was answered unrun".to_owned())));
        // The caller may have stopped waiting (its request was cancelled); the
        // work is done either way, so there is no one else to tell.
        let _ = reply.send(result);
    }
}

fn stopped() -> StoreError {
    StoreError::Backend(STOPPED.to_owned())
}

/// Queues `work` for a connection thread and waits for its result.
async fn call<T, F>(queue: &mpsc::Sender<Command>, work: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let job = Box::new(Call { work: Some(work), result: None, reply });
    queue.send(Command::Run(job)).await.map_err(|_| stopped())?;
    // A closed reply channel means the thread ended (or died) with the job unanswered.
    answer.await.map_err(|_| stopped())?
}

/// Opens a thread's connection and reports to `ready` whether that worked.
/// `None` leaves the thread nothing to do: the connection failed, or whoever
/// was opening the store gave up, so nobody can send jobs.
fn open_and_report(
    open: impl FnOnce() -> StoreResult<Connection>,
    ready: oneshot::Sender<StoreResult<()>>,
) -> Option<Connection> {
    match open() {
        Ok(conn) => ready.send(Ok(())).is_ok().then_some(conn),
        Err(err) => {
            let _ = ready.send(Err(err));
            None
        }
    }
}

/// The writer thread: opens the write connection, reports whether that worked,
/// then runs queued jobs in group commits until stopped.
fn run_writer(
    file: Option<PathBuf>,
    mut queue: mpsc::Receiver<Command>,
    checkpoints: Option<std::sync::mpsc::SyncSender<()>>,
    ready: oneshot::Sender<StoreResult<()>>,
) {
    let Some(conn) = open_and_report(|| open_writer(file.as_deref()), ready) else { return };
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    // Commits of the last interval before the writes stop are checkpointed with
    // the next write, or when the last connection closes; until then they are
    // safe in the WAL.
    let mut last_wake = Instant::now();
    // Waits for one job, then takes whatever else is already queued without
    // waiting: a busy queue yields big batches, an idle one a batch of one.
    while let Some(Command::Run(job)) = queue.blocking_recv() {
        batch.push(job);
        let mut stop = false;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Command::Run(job)) => batch.push(job),
                Ok(Command::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch);
        if let Some(checkpoints) = &checkpoints {
            if last_wake.elapsed() >= CHECKPOINT_INTERVAL {
                last_wake = Instant::now();
                // A full channel means a wake-up is already pending, and a closed
                // one that the checkpointer is gone; neither is worth waiting for.
                let _ = checkpoints.try_send(());
            }
        }
        if stop {
            break;
        }
    }
}

/// Runs a batch of jobs in one transaction, commits once, and only then answers them.
///
/// Each job is a single statement. When a statement fails (a uniqueness
/// violation, a missing thread), SQLite undoes just that statement and the
/// transaction goes on, so the error is that job's alone. The answers wait for
/// `COMMIT` because until then nothing is durable, nor visible to readers: a
/// caller told "saved" before the commit could read its record back as missing,
/// or lose it when the commit fails. If the commit fails, every job of the batch
/// gets the error. A job that ever needs several statements must wrap them in a
/// `SAVEPOINT` so that its failure undoes all of them and nothing else.
fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    let mut settled = 0;
    while settled < batch.len() {
        settled += run_transaction(conn, &mut batch[settled..]);
    }
    for job in batch.drain(..) {
        job.answer();
    }
}

/// Runs jobs in one transaction and commits it, failing the jobs whose work did
/// not commit. Returns how many jobs it settled: all of them, unless SQLite
/// rolled the transaction back midway, and then those up to that point.
fn run_transaction(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> usize {
    if let Err(err) = execute(conn, "BEGIN IMMEDIATE", []) {
        let message = format!("cannot begin a transaction: {err}");
        jobs.iter_mut().for_each(|job| job.fail(&message));
        return jobs.len();
    }
    let mut ran = 0;
    for job in jobs.iter_mut() {
        job.run(conn);
        ran += 1;
        if conn.is_autocommit() {
            // Some errors (a full disk, an I/O error) make SQLite roll back the
            // whole transaction, not just the statement: what ran before in this
            // transaction is undone, and the jobs after go in a new one.
            let message = "the transaction was rolled back by a later statement's failure";
            jobs[..ran].iter_mut().for_each(|job| job.fail(message));
            return ran;
        }
    }
    if let Err(err) = execute(conn, "COMMIT", []) {
        let message = format!("cannot commit: {err}");
        tracing::error!(%err, jobs = jobs.len(), "a sqlite group commit failed");
        if !conn.is_autocommit() {
            if let Err(rollback) = execute(conn, "ROLLBACK", []) {
                tracing::error!(%rollback, "rolling back a failed group commit failed");
            }
        }
        jobs.iter_mut().for_each(|job| job.fail(&message));
    }
    jobs.len()
}

/// A reader thread: opens its connection, reports whether that worked, then
/// runs jobs from the shared queue one at a time until stopped.
fn run_reader(path: PathBuf, queue: Arc<Mutex<mpsc::Receiver<Command>>>, ready: oneshot::Sender<StoreResult<()>>) {
    let Some(conn) = open_and_report(|| open_existing(&path, true), ready) else { return };
    loop {
        // The lock is held while waiting, so one idle reader waits on the queue
        // and the others on the lock; it is released before the job runs.
        let command = queue.lock().unwrap_or_else(PoisonError::into_inner).blocking_recv();
        match command {
            Some(Command::Run(mut job)) => {
                job.run(&conn);
                job.answer();
            }
            Some(Command::Stop) | None => return,
        }
    }
}

/// The checkpointer thread: copies committed pages from the WAL back into the
/// database file whenever the writer reports new commits, so that this copying,
/// and the fsyncs that go with it, do not hold up the writer's commits.
fn run_checkpointer(path: PathBuf, wake: std::sync::mpsc::Receiver<()>, ready: oneshot::Sender<StoreResult<()>>) {
    let Some(conn) = open_and_report(|| open_existing(&path, false), ready) else { return };
    // The wake-ups end when the writer does, which drops its end of the channel.
    while wake.recv().is_ok() {
        // PASSIVE takes no lock the writer or the readers need and waits for none;
        // frames it may not copy yet, because some reader's snapshot predates
        // them, are left for the next round.
        if let Err(err) = query_value::<i64>(&conn, "PRAGMA wal_checkpoint(PASSIVE)", []) {
            tracing::warn!(%err, "a background sqlite checkpoint failed");
        }
    }
}

fn spawn_thread(name: String, body: impl FnOnce() + Send + 'static) -> StoreResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|err| StoreError::Backend(format!("cannot start a sqlite thread: {err}")))
}

/// Waits for a thread to report that its connection is open.
async fn wait_ready(ready: oneshot::Receiver<StoreResult<()>>) -> StoreResult<()> {
    ready.await.map_err(|_| stopped())?
}

/// The queues to a database's threads, and the threads themselves.
///
/// Dropping it drops the senders, and each thread ends once it has answered
/// what is already queued; nothing waits for them, so a drop never blocks.
pub(super) struct Workers {
    /// The writer thread's queue.
    writer: mpsc::Sender<Command>,
    /// The reader threads' queue; the writer's own for an in-memory database.
    readers: mpsc::Sender<Command>,
    /// How many threads take jobs from `readers` (none of their own for an in-memory database).
    pub reader_threads: usize,
    /// Read connections for `read_small` on the caller's thread (none for an in-memory database).
    inline: Vec<Mutex<Connection>>,
    /// The threads, taken by `stop` to join them.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts the writer thread, which opens and migrates the database (`None`:
    /// an in-memory one), then, for a file, the checkpointer and the readers. An
    /// error stops whatever was started: the channels' senders are dropped, and
    /// the threads end on their own.
    pub(super) async fn start(file: Option<PathBuf>) -> StoreResult<Workers> {
        let mut threads = Vec::new();
        let (writer, writer_queue) = mpsc::channel(QUEUE_CAPACITY);
        let (ready, writer_ready) = oneshot::channel();
        let writer_file = file.clone();
        let (checkpoints, wake) = std::sync::mpsc::sync_channel(1);
        // Only a file has a WAL to checkpoint.
        let checkpoints = file.is_some().then_some(checkpoints);
        threads.push(spawn_thread("sqlite-writer".to_owned(), move || {
            run_writer(writer_file, writer_queue, checkpoints, ready)
        })?);
        wait_ready(writer_ready).await?;
        let Some(path) = file else {
            // Every in-memory connection would be a database of its own, so the
            // writer's one connection serves the reads too.
            let readers = writer.clone();
            let inline = Vec::new();
            return Ok(Workers { writer, readers, reader_threads: 0, inline, threads: Mutex::new(threads) });
        };
        let (ready, checkpointer_ready) = oneshot::channel();
        let checkpointer_path = path.clone();
        threads.push(spawn_thread("sqlite-checkpoint".to_owned(), move || {
            run_checkpointer(checkpointer_path, wake, ready)
        })?);
        wait_ready(checkpointer_ready).await?;

        let (readers, reader_queue) = mpsc::channel(QUEUE_CAPACITY);
        let reader_queue = Arc::new(Mutex::new(reader_queue));
        let mut pending = Vec::with_capacity(READERS);
        for n in 0..READERS {
            let (ready, reader_ready) = oneshot::channel();
            let (queue, path) = (reader_queue.clone(), path.clone());
            threads.push(spawn_thread(format!("sqlite-reader-{n}"), move || run_reader(path, queue, ready))?);
            pending.push(reader_ready);
        }
        for reader_ready in pending {
            wait_ready(reader_ready).await?;
        }
        let inline = (0..INLINE_READERS)
            .map(|_| {
                let conn = open_existing(&path, true)?;
                conn.busy_timeout(INLINE_BUSY_TIMEOUT).map_err(|err| StoreError::Backend(err.to_string()))?;
                Ok(Mutex::new(conn))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Workers { writer, readers, reader_threads: READERS, inline, threads: Mutex::new(threads) })
    }

    /// Runs a small read (a few rows, found through an index) on the caller's
    /// own thread when one of the inline connections is free, and on a reader
    /// thread otherwise.
    pub(super) async fn read_small<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        for slot in &self.inline {
            if let Ok(conn) = slot.try_lock() {
                return work(&conn);
            }
        }
        call(&self.readers, work).await
    }

    /// Runs `work` on a read connection (the only connection, for an in-memory database).
    pub(super) async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        call(&self.readers, work).await
    }

    /// Runs `work` on the write connection, answering once its group commit is done.
    pub(super) async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        call(&self.writer, work).await
    }

    /// Stops the threads once they have answered every job queued so far, and
    /// waits for them to end, closing the connections. Later jobs fail with a
    /// backend error.
    pub(super) async fn stop(&self) {
        // The inline connections close with the store; until then a read on
        // them keeps working, as a queued read does until its thread stops.
        // A stop queues behind the jobs already sent, so those are still answered.
        // A send fails only when the thread has already gone.
        let _ = self.writer.send(Command::Stop).await;
        for _ in 0..self.reader_threads {
            if self.readers.send(Command::Stop).await.is_err() {
                break;
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if threads.is_empty() {
            return;
        }
        // Joining blocks, so it happens off the runtime's threads.
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a sqlite thread panicked");
                }
            }
        })
        .await;
        if let Err(err) = joined {
            tracing::error!(%err, "could not wait for the sqlite threads to end");
        }
    }
}
