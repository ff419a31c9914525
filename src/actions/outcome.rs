//! What a successful action did: the `detail` of its log line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

/// What a successful action did; `Display` is the `detail` of its log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionOk {
    Staged {
        dir: PathBuf,
    },
    Signalled {
        signal: Signal,
        pids: Vec<i32>,
    },
    Exited {
        program: String,
    },
    Posted {
        url: String,
        status: hyper::StatusCode,
    },
    Served {
        addr: String,
        after: Duration,
    },
}

impl fmt::Display for ActionOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionOk::Staged { dir } => write!(f, "staged into {}", dir.display()),
            ActionOk::Signalled { signal, pids } => {
                write!(f, "sent {signal} to pid ")?;
                for (i, pid) in pids.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{pid}")?;
                }
                Ok(())
            }
            ActionOk::Exited { program } => write!(f, "{program} exited 0"),
            ActionOk::Posted { url, status } => write!(f, "POST {url} answered {status}"),
            ActionOk::Served { addr, after } => {
                write!(f, "{addr} serves the new certificate after {after:?}")
            }
        }
    }
}
