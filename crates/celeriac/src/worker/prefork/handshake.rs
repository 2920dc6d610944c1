//! Who may join the pool: the socket's private directory, the children's one-time tokens,
//! and the check every connection passes before it is taken as a child.
//!
//! The directory (mode 0700, random name) keeps other users from reaching the socket at
//! all. Against a process of the worker's own user, which can reach it, two proofs are
//! asked: `SO_PEERCRED` (set by the kernel, so it cannot be forged) must name the process
//! the worker just started, and the hello must carry the token that process was given.
//! Each token is 256 bits from the OS and is accepted once.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use tokio::net::unix::UCred;

use super::wire::Hello;

/// A fresh directory only the worker's user can enter, holding the pool's socket; removed
/// (with the socket) on [`SocketDir::remove`] or drop.
#[derive(Debug)]
pub(super) struct SocketDir {
    dir: PathBuf,
    socket: PathBuf,
    uid: u32,
}

impl SocketDir {
    /// Creates `celeriac-prefork-<pid>-<random>` in the temp directory, mode 0700.
    pub(super) fn create() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "celeriac-prefork-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        // Not `create_dir_all`: the directory must be new, so one planted in advance (or a
        // symlink in its place) fails here instead of being used.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        // The umask may have taken bits away from 0700 (a umask of 0o700 leaves none);
        // set exactly what the pool needs.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let uid = std::fs::metadata(&dir)?.uid();
        let socket = dir.join("pool.sock");
        remove_stale(&std::env::temp_dir(), uid);
        Ok(Self { dir, socket, uid })
    }

    /// Where the pool listens.
    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The worker's user: the directory's owner (it was created by this process).
    pub(super) fn uid(&self) -> u32 {
        self.uid
    }

    /// Removes the socket and the directory; idempotent.
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the socket directories (and the older flat `.sock` files) that workers of
/// user `uid` left in `tmp` when they were killed with SIGKILL and could not clean up:
/// those whose worker process (the pid in the name) no longer exists.
fn remove_stale(tmp: &Path, uid: u32) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("celeriac-prefork-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == uid);
        if !ours || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if path.is_dir() {
            let _ = std::fs::remove_file(path.join("pool.sock"));
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A child's one-time secret, 256 random bits as 64 hex digits.
pub(super) struct Token(String);

impl Token {
    /// A new token from the operating system's random source.
    pub(super) fn new() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token's text, for the child's environment.
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is, so response times
    /// reveal nothing about the token.
    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The child being started, as the worker knows it.
#[derive(Debug)]
pub(super) struct Expected {
    pub(super) child: u64,
    pub(super) pid: u32,
    pub(super) uid: u32,
    /// `None` once the token has been accepted.
    token: Option<Token>,
}

/// Why a connection was not taken as a child.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The peer runs as another user.
    Uid { peer: u32, want: u32 },
    /// The peer is not the process the worker started (or its pid is unknown).
    Pid { peer: Option<i32>, want: u32 },
    /// The first line was not a hello.
    NoHello,
    /// The hello names another child.
    Child { claimed: u64, want: u64 },
    /// The hello's token is not the child's.
    Token,
    /// The child's token was accepted before.
    TokenUsed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Uid { peer, want } => {
                write!(f, "peer uid {peer} is not the worker's uid {want}")
            }
            Refusal::Pid {
                peer: Some(peer),
                want,
            } => write!(f, "peer pid {peer} is not the new child's pid {want}"),
            Refusal::Pid { peer: None, want } => {
                write!(f, "peer pid unknown, the new child's is {want}")
            }
            Refusal::NoHello => f.write_str("no valid hello"),
            Refusal::Child { claimed, want } => {
                write!(f, "hello claims child {claimed}, expected child {want}")
            }
            Refusal::Token => f.write_str("wrong token"),
            Refusal::TokenUsed => f.write_str("token already used"),
        }
    }
}

impl Expected {
    pub(super) fn new(child: u64, pid: u32, uid: u32, token: Token) -> Self {
        Self {
            child,
            pid,
            uid,
            token: Some(token),
        }
    }

    /// Checks the kernel's word on the peer; done before reading anything from it, so an
    /// impostor that never writes cannot hold up the child being started.
    pub(super) fn check_peer(&self, cred: &UCred) -> Result<(), Refusal> {
        self.check_peer_ids(cred.uid(), cred.pid())
    }

    fn check_peer_ids(&self, uid: u32, pid: Option<i32>) -> Result<(), Refusal> {
        if uid != self.uid {
            return Err(Refusal::Uid {
                peer: uid,
                want: self.uid,
            });
        }
        if pid.and_then(|p| u32::try_from(p).ok()) != Some(self.pid) {
            return Err(Refusal::Pid {
                peer: pid,
                want: self.pid,
            });
        }
        Ok(())
    }

    /// Checks the hello and uses up the token: a second hello with it is refused.
    pub(super) fn admit(&mut self, hello: Option<&Hello>) -> Result<(), Refusal> {
        let hello = hello.ok_or(Refusal::NoHello)?;
        if hello.child != self.child {
            return Err(Refusal::Child {
                claimed: hello.child,
                want: self.child,
            });
        }
        let token = self.token.as_ref().ok_or(Refusal::TokenUsed)?;
        if !token.matches(&hello.token) {
            return Err(Refusal::Token);
        }
        self.token = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(child: u64, token: &str) -> Hello {
        Hello {
            child,
            token: token.to_string(),
        }
    }

    #[test]
    fn tokens_are_256_random_bits_and_differ() {
        let (a, b) = (Token::new(), Token::new());
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(format!("{a:?}"), "Token(..)");
    }

    #[test]
    fn only_the_started_process_of_the_workers_user_passes_the_peer_check() {
        let e = Expected::new(3, 4242, 1000, Token::new());
        assert_eq!(e.check_peer_ids(1000, Some(4242)), Ok(()));
        assert_eq!(
            e.check_peer_ids(1001, Some(4242)),
            Err(Refusal::Uid {
                peer: 1001,
                want: 1000
            })
        );
        assert_eq!(
            e.check_peer_ids(1000, Some(4243)),
            Err(Refusal::Pid {
                peer: Some(4243),
                want: 4242
            })
        );
        assert!(e.check_peer_ids(1000, None).is_err());
        assert!(e.check_peer_ids(1000, Some(-1)).is_err());
    }

    #[test]
    fn a_hello_needs_the_childs_token_and_it_works_once() {
        let token = Token::new();
        let good = token.as_str().to_string();
        let mut e = Expected::new(3, 4242, 1000, token);
        assert_eq!(e.admit(None), Err(Refusal::NoHello));
        assert_eq!(
            e.admit(Some(&hello(4, &good))),
            Err(Refusal::Child {
                claimed: 4,
                want: 3
            })
        );
        assert_eq!(e.admit(Some(&hello(3, ""))), Err(Refusal::Token));
        let mut wrong = good.clone();
        wrong.replace_range(63.., if good.ends_with('0') { "1" } else { "0" });
        assert_eq!(e.admit(Some(&hello(3, &wrong))), Err(Refusal::Token));
        assert_eq!(e.admit(Some(&hello(3, &good))), Ok(()));
        assert_eq!(e.admit(Some(&hello(3, &good))), Err(Refusal::TokenUsed));
    }

    #[test]
    fn the_socket_directory_is_private_new_and_removed() {
        let d = SocketDir::create().unwrap();
        let dir = d.socket().parent().unwrap().to_path_buf();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_ne!(dir, std::env::temp_dir());
        drop(d);
        assert!(!dir.exists());
    }
}
