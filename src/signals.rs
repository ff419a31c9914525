//! Process signals of the long-running subcommands: SIGTERM and SIGINT start a drain and a
//! clean exit, SIGHUP re-reads the credentials now (the usual validate-then-swap; it never
//! exits), and the other signals whose default action would end the process are logged and
//! ignored (see [`IGNORED`]). SIGQUIT keeps its default (quit with a core dump): it is the
//! operator's way to stop the process at once, short of SIGKILL.
//!
//! [`block`] runs first thing in `main`, before any other thread exists, so that a signal that
//! arrives while the process starts up stays pending instead of killing it with its default
//! action; [`Signals::install`] registers a handler for each and only then unblocks them on the
//! calling thread (the one that runs the async main), which then receives them. Threads started
//! meanwhile inherit the blocked mask, which is harmless: a process-directed signal goes to a
//! thread that does not block it. Child processes (the exec action) start with an empty mask:
//! the standard library resets it before exec.

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use tokio::signal::unix::{signal, SignalKind};

/// Signals that stop the process after a drain.
const SHUTDOWN: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];
/// Signals that re-read the credentials.
const RELOAD: [Signal; 1] = [Signal::SIGHUP];
/// Signals whose default action ends the process but which mean nothing to us: logged and
/// ignored, so that a stray `kill -USR1` (nginx's "reopen logs") cannot take the pod down.
pub const IGNORED: [Signal; 7] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
];

/// What a received signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    Shutdown(Signal),
    Reload(Signal),
    Ignored(Signal),
}

fn all() -> impl Iterator<Item = Signal> {
    SHUTDOWN.into_iter().chain(RELOAD).chain(IGNORED)
}

fn set() -> SigSet {
    let mut set = SigSet::empty();
    for s in all() {
        set.add(s);
    }
    set
}

/// Blocks every handled signal on the calling thread (see the module docs). Call it from
/// `main` before the async runtime starts.
pub fn block() -> nix::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set()), None)
}

/// The handlers of every handled signal.
pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Registers the handlers, then unblocks the signals on this thread; signals that arrived
    /// while they were blocked are delivered now and seen by [`Signals::next`].
    pub fn install() -> io::Result<Signals> {
        let streams = all()
            .map(|s| Ok((s, signal(SignalKind::from_raw(s as i32))?)))
            .collect::<io::Result<Vec<_>>>()?;
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set()), None)?;
        Ok(Signals { streams })
    }

    /// The next signal received.
    pub async fn next(&mut self) -> Received {
        let signal = poll_fn(|cx| {
            for (signal, stream) in &mut self.streams {
                if stream.poll_recv(cx).is_ready() {
                    return Poll::Ready(*signal);
                }
            }
            Poll::Pending
        })
        .await;
        if SHUTDOWN.contains(&signal) {
            Received::Shutdown(signal)
        } else if RELOAD.contains(&signal) {
            Received::Reload(signal)
        } else {
            Received::Ignored(signal)
        }
    }
}
