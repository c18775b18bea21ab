//! What one request ends with, shared by the protocols (`client::Http`, `echo::Echo`) and the
//! connection loop that records it: the reply, or the failure and why.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::response::ParseError;
use crate::stats::ErrorKind;

/// Why a request failed; formatted only for the first error of each kind.
#[derive(Debug)]
pub enum Detail {
    Io(io::Error),
    Parse(ParseError),
    EchoMismatch,
    Timeout(Duration),
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Io(e) => write!(f, "{e}"),
            Detail::Parse(ParseError::Bad) => f.write_str("malformed HTTP response"),
            Detail::Parse(ParseError::ClosedEarly) => {
                f.write_str("the server closed the connection before the response was complete")
            }
            Detail::EchoMismatch => f.write_str("the echoed bytes differ from the bytes sent"),
            Detail::Timeout(t) => write!(f, "no complete response within {t:?}"),
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: Detail,
}

impl Failure {
    pub fn io(e: io::Error, connecting: bool) -> Self {
        Failure {
            kind: ErrorKind::from_io(&e, connecting),
            detail: Detail::Io(e),
        }
    }

    pub fn parse(e: ParseError) -> Self {
        let kind = match e {
            ParseError::Bad => ErrorKind::BadResponse,
            ParseError::ClosedEarly => ErrorKind::ClosedEarly,
        };
        Failure {
            kind,
            detail: Detail::Parse(e),
        }
    }
}

/// What happens to the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Reuse,
    /// The server already closed (read-to-close body) or did not promise to: just close.
    Close,
    /// The server said it will close: wait for its FIN first, so that the TIME_WAIT state stays on
    /// its side and this machine does not run out of ephemeral ports.
    DrainThenClose,
}

/// A complete response.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub server: usize,
    pub bytes: u64,
    pub after: After,
}

pub type Outcome = (Result<Reply, Failure>, Vec<u8>);
