//! A bulletin board on a lagging chordkv ring, the application the session guarantees were made
//! for (Terry et al. 1994): a reply is never shown without the post it answers.
//!
//! ```text
//! cargo run --example bulletin_board                  # posts and replies, a node dies midway
//! cargo run --example bulletin_board -- --last-one    # users leave a thread; "you are the last one"
//! cargo run --example bulletin_board -- --no-sessions # the same without sessions: the checker fires
//! ```
//!
//! THE RING
//!
//! Five real `chordkv-node` processes (built first with `cargo build`, like the system tests'
//! harness does) on loopback ports in a temporary directory, N = 3 copies, W = 1 and R = 1, so
//! a write is acknowledged by its owner alone and its replicas may lag, and anti-entropy slowed
//! to one comparison every 10 s. Midway one node (the victim) is cut off with
//! `Request::Block`: it still answers, but every request it sends to a peer is dropped, so the
//! writes it coordinates from then on stay on it alone. Then it is killed (SIGKILL), and its
//! keys pass to a successor whose copies lag. At the end it is restarted on its data directory
//! and what it held comes back.
//!
//! Four users, each in a session of its own, start on different nodes and switch to the next
//! node before every operation: a new `Client` on another node, `.sharing_session(&old)`.
//!
//! THE DATA MODEL
//!
//! - `post/<id>`: one post, lines `author=`, `thread=<root id>`, `parent=<id>` (absent for a
//!   root post) and `text=`. Ids are `p01`, `p02`, … increasing in the order the posts were
//!   made, so a parent's id is always smaller than its replies' (the run skips some, to put
//!   one post on the node it will kill and its replies elsewhere).
//! - `thread/<root>`: the ids of the thread's posts, one a line.
//! - `threads`: the ids of the root posts, one a line.
//!
//! The two lists are sets, updated read-modify-write (read, add, write back with the read's
//! context). Two updates coordinated concurrently would leave siblings; a reader takes the union
//! of the siblings, and the next update writes the union back with a context covering them.
//! A reply is written after its parent was read, and the thread list after the reply: the
//! session's writes carry what it read and wrote as dependencies, so whoever reads the list or
//! the reply inherits the requirement to see the parent.
//!
//! THE CHECK
//!
//! Each view reads `threads`, each thread's list, then the posts newest first (so a reply is
//! read before its parent, and the parent's read is held to what the reply's writer had seen),
//! and then any parent not read yet. A reply shown while its parent read as absent is a
//! VIOLATION. A parent whose read was refused with `SessionUnmet` is shown as "waiting for its
//! parent": the copies reachable are older than what the session must see, which the board may
//! say but must not hide. The run ends with the number of views checked and of violations, and
//! exits non-zero on a violation. It also prints what the sessions cost: keys held, unstable
//! keys, saved bytes, and the largest dependency set that came with a value read.

use chordkv_node::message::{Request, Response};
use kvctl::{Client, Error, ReadReply};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Bounds every client connection and request. Longer than the nodes' own request deadline
/// (`--request-timeout-ms`), so a session request the nodes cannot serve ends in their
/// `SessionUnmet`, not in a client timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);

/// How long the ring may take to converge after a start, kill or restart.
const CONVERGE: Duration = Duration::from_secs(40);

/// Nodes in the ring.
const NODES: usize = 5;

/// Flags every node gets: fast ring timers (as the system tests use), W = R = 1, slow
/// anti-entropy, fault injection, and a 3 s deadline for a client request (the node retries a
/// session request whose floor no copy meets until then, then answers `SessionUnmet`).
const NODE_ARGS: [&str; 17] = [
    "--stabilize-ms",
    "100",
    "--fix-fingers-ms",
    "50",
    "--heartbeat-ms",
    "200",
    "--rpc-timeout-ms",
    "500",
    "--write-quorum",
    "1",
    "--read-quorum",
    "1",
    "--sync-ms",
    "10000",
    "--request-timeout-ms",
    "3000",
    "--allow-fault-injection",
];

// ---------------------------------------------------------------------------------------------
// The board's data and the checks: pure, tested below.
// ---------------------------------------------------------------------------------------------

/// One post as stored under `post/<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Post {
    author: String,
    /// The id of the thread's root post (its own id, for a root).
    thread: String,
    /// The post it answers; `None` for a root post.
    parent: Option<String>,
    text: String,
}

impl Post {
    fn encode(&self) -> Vec<u8> {
        let mut s = format!("author={}\nthread={}\n", self.author, self.thread);
        if let Some(p) = &self.parent {
            s.push_str(&format!("parent={p}\n"));
        }
        s.push_str(&format!("text={}\n", self.text));
        s.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Post> {
        let text = String::from_utf8_lossy(bytes);
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            fields.insert(k, v);
        }
        Some(Post {
            author: fields.get("author")?.to_string(),
            thread: fields.get("thread")?.to_string(),
            parent: fields.get("parent").map(|p| p.to_string()),
            text: fields.get("text")?.to_string(),
        })
    }
}

/// A set of ids, one a line; the union of the siblings when a read returns several.
fn decode_set(values: &[Vec<u8>]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn encode_set(set: &BTreeSet<String>) -> Vec<u8> {
    set.iter()
        .map(|id| format!("{id}\n"))
        .collect::<String>()
        .into_bytes()
}

/// What a session's read of one post gave.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// The post, to show.
    Shown(Post),
    /// Refused with `SessionUnmet`: the copies reachable are older than the session has to see.
    Waiting(String),
    /// The read succeeded and found nothing.
    Absent,
    /// Any other failure (a timeout, too few copies reachable): not shown, and said so.
    Unreadable(String),
}

/// One session's view of one thread: every post it read, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ThreadView {
    root: String,
    posts: BTreeMap<String, Seen>,
}

/// The replies `view` shows whose parent it does not: `(reply, parent)` for each reply shown
/// while its parent read as absent (or was not read at all). A parent that is waiting or
/// unreadable is not shown either, but the board says so ("waiting for its parent"), which is
/// allowed; a parent that silently is not there is the violation.
fn orphans(view: &ThreadView) -> Vec<(String, String)> {
    view.posts
        .iter()
        .filter_map(|(id, seen)| match seen {
            Seen::Shown(Post {
                parent: Some(parent),
                ..
            }) => match view.posts.get(parent) {
                Some(Seen::Shown(_) | Seen::Waiting(_) | Seen::Unreadable(_)) => None,
                Some(Seen::Absent) | None => Some((id.clone(), parent.clone())),
            },
            _ => None,
        })
        .collect()
}

/// A thread's member list, stored under `members/<thread>`: who joined and who left. Nobody
/// rejoins, so a member is live if joined and not left, and two concurrent versions merge by
/// union of both sets without bringing back anyone who left (a two-phase set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Members {
    joined: BTreeSet<String>,
    left: BTreeSet<String>,
}

impl Members {
    fn live(&self) -> BTreeSet<String> {
        self.joined.difference(&self.left).cloned().collect()
    }

    fn encode(&self) -> Vec<u8> {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" ");
        format!("joined={}\nleft={}\n", join(&self.joined), join(&self.left)).into_bytes()
    }

    /// The union of `values` (siblings merge).
    fn decode(values: &[Vec<u8>]) -> Members {
        let mut m = Members::default();
        for v in values {
            for line in String::from_utf8_lossy(v).lines() {
                let Some((k, names)) = line.split_once('=') else {
                    continue;
                };
                let set = if k == "joined" {
                    &mut m.joined
                } else {
                    &mut m.left
                };
                set.extend(names.split_whitespace().map(str::to_string));
            }
        }
        m
    }
}

/// What one user's session has seen of a member list, to judge its next read by.
#[derive(Clone, Debug, Default)]
struct MemberHistory {
    /// Who the user has seen leave.
    seen_left: BTreeSet<String>,
    /// Whether the user's own leave was acknowledged.
    left_myself: bool,
}

impl MemberHistory {
    /// The guarantees `read` breaks for user `me`, then `read` taken in.
    fn judge(&mut self, me: &str, read: &Members) -> Vec<String> {
        let mut broken = Vec::new();
        if self.left_myself && read.live().contains(me) {
            broken.push(format!(
                "read your writes: {me} left, but the list shows {me} still in it"
            ));
        }
        // Its own leave coming back is read your writes, above.
        for back in self.seen_left.difference(&read.left).filter(|b| *b != me) {
            broken.push(format!(
                "monotonic reads: {me} saw {back} leave, and now sees {back} back"
            ));
        }
        self.seen_left.extend(read.left.iter().cloned());
        broken
    }
}

// ---------------------------------------------------------------------------------------------
// The ring: node processes this example owns.
// ---------------------------------------------------------------------------------------------

/// One node process.
struct NodeProc {
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The example's nodes; dropping it kills them, then removes their directory.
struct Ring {
    bin: PathBuf,
    nodes: Vec<NodeProc>,
    dir: tempfile::TempDir,
}

impl Drop for Ring {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Builds `chordkv-node` into the target directory this example runs from, in its profile, and
/// returns its path: `cargo run --example` builds only the example and the libraries it uses.
fn node_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bulletin_board
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("cannot tell the target directory from {exe:?}"))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{profile_dir:?} has no parent"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--bin", "chordkv-node", "-p", "chordkv-node"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let status = build.stdin(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "building chordkv-node failed ({status})");
    Ok(profile_dir.join(format!("chordkv-node{}", std::env::consts::EXE_SUFFIX)))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Ring {
    /// Starts `n` nodes, the first alone and the others joining through it, and waits until
    /// they form one ring with every key on three nodes.
    async fn start(n: usize) -> anyhow::Result<Ring> {
        let mut ring = Ring {
            bin: node_binary()?,
            nodes: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("chordkv-board-")
                .tempdir()?,
        };
        for i in 0..n {
            let addr = free_addr()?;
            ring.nodes.push(NodeProc {
                addr,
                data_dir: ring.dir.path().join(format!("node{i}")),
                log: ring.dir.path().join(format!("node{i}.log")),
                child: None,
            });
            ring.spawn(i, (i > 0).then_some(0))?;
        }
        ring.wait_for(&ring.all()).await?;
        Ok(ring)
    }

    fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.to_string()
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    fn spawn(&mut self, i: usize, bootstrap: Option<usize>) -> anyhow::Result<()> {
        let bootstrap = bootstrap.map(|b| self.addr(b));
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--listen")
            .arg(node.addr.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(NODE_ARGS)
            .env(
                "RUST_LOG",
                std::env::var("BOARD_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(b) = bootstrap {
            cmd.arg("--bootstrap").arg(b);
        }
        node.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// SIGKILL: a crash, nothing handed over.
    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Waits until the ring walked from the first of `members` is consistent, made of exactly
    /// them, and every node holds as many replicas as it wants.
    async fn wait_for(&self, members: &[usize]) -> anyhow::Result<()> {
        let want: BTreeSet<SocketAddr> = members.iter().map(|&i| self.nodes[i].addr).collect();
        let deadline = Instant::now() + CONVERGE;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match Client::ring(&self.addr(members[0]), Duration::from_secs(2)).await {
                Ok(view) => {
                    let got: BTreeSet<SocketAddr> =
                        view.nodes.iter().map(|m| m.node().addr).collect();
                    let full = view
                        .nodes
                        .iter()
                        .filter_map(|m| m.status())
                        .all(|s| s.replicas >= s.replicas_wanted.min(members.len() as u32));
                    if view.is_consistent() && got == want && full {
                        return Ok(());
                    }
                    last = format!("ring {got:?}, consistent {}", view.is_consistent());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "the ring of nodes {members:?} did not converge within {CONVERGE:?} ({last}); \
             node logs in {}",
            self.dir.path().display()
        )
    }

    /// Tells node `i` to drop every request it sends to `peers` from now on.
    async fn block(&self, i: usize, peers: &[usize]) -> anyhow::Result<()> {
        let peers = peers.iter().map(|&p| self.nodes[p].addr).collect();
        let client = Client::connect(&self.addr(i), CLIENT_TIMEOUT).await?;
        match client.call(Request::Block { peers }).await? {
            Response::Ack => Ok(()),
            other => anyhow::bail!("node {i} refused the block: {other:?}"),
        }
    }

    /// The index of the node that owns `key`, asked through node `via`.
    async fn owner(&self, via: usize, key: &str) -> anyhow::Result<usize> {
        let client = Client::connect(&self.addr(via), CLIENT_TIMEOUT).await?;
        let info = client.lookup(key.as_bytes()).await?;
        self.index_of(info.owner.addr)
            .ok_or_else(|| anyhow::anyhow!("{key} is owned by a stranger, {}", info.owner.addr))
    }
}

// ---------------------------------------------------------------------------------------------
// Users: sessions that move from node to node.
// ---------------------------------------------------------------------------------------------

/// What the run measured, for the closing summary.
#[derive(Debug, Default)]
struct Tally {
    views: usize,
    violations: Vec<String>,
    waiting: usize,
    unreadable: usize,
    /// The largest dependency set a read returned: (count, encoded bytes, key).
    max_deps: (usize, usize, String),
    /// The largest session seen: (keys, unstable, saved bytes, user).
    max_session: (usize, usize, usize, String),
}

impl Tally {
    /// Notes the size of `u`'s session and returns it (keys, unstable keys, saved bytes).
    fn saw_session(&mut self, u: &User) -> Option<(usize, usize, usize)> {
        let s = u.client.session()?;
        let size = (s.len(), s.unstable(), s.to_bytes().len());
        if size > (self.max_session.0, self.max_session.1, self.max_session.2) {
            self.max_session = (size.0, size.1, size.2, u.name.clone());
        }
        Some(size)
    }

    fn saw_deps(&mut self, key: &str, reply: &ReadReply) {
        let d = (reply.deps.len(), reply.deps.encoded_len());
        if d > (self.max_deps.0, self.max_deps.1) {
            self.max_deps = (d.0, d.1, key.to_string());
        }
    }
}

/// One user of the board: a session, and the node it talks to now.
struct User {
    name: String,
    client: Client,
    /// Index into the nodes the user may use.
    at: usize,
    sessions: bool,
}

impl User {
    async fn new(name: &str, node: usize, ring: &Ring, sessions: bool) -> anyhow::Result<User> {
        let client = Client::connect(&ring.addr(node), CLIENT_TIMEOUT).await?;
        let client = if sessions {
            client.with_session(kvctl::Session::new())
        } else {
            client
        };
        Ok(User {
            name: name.to_string(),
            client,
            at: node,
            sessions,
        })
    }

    /// Moves to the next node of `usable` (after the one it is on) for the next operation,
    /// carrying the session along.
    async fn hop(&mut self, ring: &Ring, usable: &[usize]) -> anyhow::Result<()> {
        let next = usable
            .iter()
            .copied()
            .find(|&i| i > self.at)
            .or_else(|| usable.first().copied())
            .ok_or_else(|| anyhow::anyhow!("no node to use"))?;
        let client = Client::connect(&ring.addr(next), CLIENT_TIMEOUT).await?;
        self.client = if self.sessions {
            client.sharing_session(&self.client)
        } else {
            client
        };
        self.at = next;
        Ok(())
    }

    fn tag(&self) -> String {
        format!("[{} via node {}]", self.name, self.at)
    }

    /// Reads `key` on the next node.
    async fn read(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        key: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<Result<ReadReply, Error>> {
        self.hop(ring, usable).await?;
        let r = self.client.read(key.as_bytes()).await;
        if let Ok(reply) = &r {
            tally.saw_deps(key, reply);
        }
        Ok(r)
    }

    /// Adds `id` to the set under `key`, read-modify-write on the next node (two hops).
    async fn add_to_set(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        key: &str,
        id: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let read = self.read(ring, usable, key, tally).await??;
        let mut set = decode_set(&read.values);
        set.insert(id.to_string());
        self.hop(ring, usable).await?;
        self.client
            .write(key.as_bytes(), &encode_set(&set), &read.context)
            .await?;
        Ok(())
    }

    /// Writes post `id` and lists it in its thread (and, for a root, in `threads`).
    async fn write_post(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        id: &str,
        post: &Post,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        self.hop(ring, usable).await?;
        self.client
            .write(
                format!("post/{id}").as_bytes(),
                &post.encode(),
                &Default::default(),
            )
            .await?;
        self.add_to_set(ring, usable, &format!("thread/{}", post.thread), id, tally)
            .await?;
        if post.parent.is_none() {
            self.add_to_set(ring, usable, "threads", id, tally).await?;
        }
        Ok(())
    }

    async fn post(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        id: &str,
        text: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let post = Post {
            author: self.name.clone(),
            thread: id.to_string(),
            parent: None,
            text: text.to_string(),
        };
        self.write_post(ring, usable, id, &post, tally).await?;
        println!("{} posted {id}: {text}", self.tag());
        Ok(())
    }

    /// Reads `parent`, then answers it; a parent the user cannot read is not answered.
    async fn reply(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        id: &str,
        parent: &str,
        text: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let read = self
            .read(ring, usable, &format!("post/{parent}"), tally)
            .await?;
        let parent_post = match read {
            Ok(r) => kvctl::single_value(r)
                .ok()
                .flatten()
                .and_then(|v| Post::decode(&v)),
            Err(e) => {
                println!("{} cannot reply to {parent} yet: {e}", self.tag());
                return Ok(());
            }
        };
        let Some(parent_post) = parent_post else {
            println!("{} cannot reply to {parent}: it is not there", self.tag());
            return Ok(());
        };
        let post = Post {
            author: self.name.clone(),
            thread: parent_post.thread,
            parent: Some(parent.to_string()),
            text: text.to_string(),
        };
        self.write_post(ring, usable, id, &post, tally).await?;
        println!("{} replied {id} to {parent}: {text}", self.tag());
        Ok(())
    }

    /// Reads a post: what the board can show of it.
    async fn see(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        id: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<Seen> {
        Ok(
            match self
                .read(ring, usable, &format!("post/{id}"), tally)
                .await?
            {
                Ok(reply) => match reply.values.first() {
                    None => Seen::Absent,
                    Some(v) => match Post::decode(v) {
                        Some(p) => Seen::Shown(p),
                        None => Seen::Unreadable("not a post".into()),
                    },
                },
                Err(e @ Error::SessionUnmet { .. }) => Seen::Waiting(e.to_string()),
                Err(e) => Seen::Unreadable(e.to_string()),
            },
        )
    }

    /// Reads the board, prints it as this session sees it, and checks every thread's view.
    async fn view(
        &mut self,
        ring: &Ring,
        usable: &[usize],
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let threads = self.read(ring, usable, "threads", tally).await?;
        let mut out = vec![format!("{} reads the board:", self.tag())];
        let roots = match threads {
            Ok(r) => decode_set(&r.values),
            Err(e) => {
                out.push(format!("  (the list of threads is not readable: {e})"));
                BTreeSet::new()
            }
        };
        for root in roots {
            let ids = match self
                .read(ring, usable, &format!("thread/{root}"), tally)
                .await?
            {
                Ok(r) => decode_set(&r.values),
                Err(e) => {
                    out.push(format!("  thread {root}: (its list is not readable: {e})"));
                    continue;
                }
            };
            let mut view = ThreadView {
                root: root.clone(),
                posts: BTreeMap::new(),
            };
            // Newest first: a reply is read before its parent.
            for id in ids.iter().rev() {
                let seen = self.see(ring, usable, id, tally).await?;
                view.posts.insert(id.clone(), seen);
            }
            // Parents not listed (yet) are read too: the check needs them.
            let missing: BTreeSet<String> = view
                .posts
                .values()
                .filter_map(|s| match s {
                    Seen::Shown(p) => p.parent.clone(),
                    _ => None,
                })
                .filter(|p| !view.posts.contains_key(p))
                .collect();
            for p in missing {
                let seen = self.see(ring, usable, &p, tally).await?;
                view.posts.insert(p, seen);
            }
            render(&view, &mut out);
            tally.views += 1;
            for s in view.posts.values() {
                match s {
                    Seen::Waiting(_) => tally.waiting += 1,
                    Seen::Unreadable(_) => tally.unreadable += 1,
                    _ => {}
                }
            }
            for (reply, parent) in orphans(&view) {
                let v = format!(
                    "VIOLATION: {} sees reply {reply} in thread {root} without its parent {parent}",
                    self.name
                );
                out.push(format!("  {v}"));
                tally.violations.push(v);
            }
        }
        if let Some((keys, unstable, bytes)) = tally.saw_session(self) {
            out.push(format!(
                "  session: {keys} keys, {unstable} unstable, {bytes} bytes saved"
            ));
        }
        println!("{}", out.join("\n"));
        Ok(())
    }
}

/// Appends the thread as a tree (replies indented under their parents) to `out`.
fn render(view: &ThreadView, out: &mut Vec<String>) {
    out.push(format!("  thread {}", view.root));
    let mut children: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for (id, seen) in &view.posts {
        let parent = match seen {
            Seen::Shown(p) => p.parent.as_deref(),
            _ => None,
        };
        // A post that is not shown hangs at the top, where it would be.
        let parent = parent.filter(|p| view.posts.contains_key(*p));
        children.entry(parent).or_default().push(id);
    }
    fn walk<'a>(
        view: &ThreadView,
        children: &BTreeMap<Option<&'a str>, Vec<&'a str>>,
        at: Option<&'a str>,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        for &id in children.get(&at).map(Vec::as_slice).unwrap_or_default() {
            let pad = "  ".repeat(depth + 2);
            let line = match &view.posts[id] {
                Seen::Shown(p) => {
                    let waiting = p.parent.as_ref().and_then(|q| match view.posts.get(q) {
                        Some(Seen::Waiting(_)) => Some(format!(" (waiting for its parent {q})")),
                        Some(Seen::Unreadable(_)) => {
                            Some(format!(" (its parent {q} is unreachable)"))
                        }
                        _ => None,
                    });
                    format!(
                        "{pad}{id} {}: {}{}",
                        p.author,
                        p.text,
                        waiting.unwrap_or_default()
                    )
                }
                Seen::Waiting(_) => format!(
                    "{pad}{id} … waiting: the copies reachable are older than this session has seen"
                ),
                Seen::Absent => format!("{pad}{id} (not there)"),
                Seen::Unreadable(e) => format!("{pad}{id} (unreadable: {e})"),
            };
            out.push(line);
            walk(view, children, Some(id), depth + 1, out);
        }
    }
    walk(view, &children, None, 0, out);
}

// ---------------------------------------------------------------------------------------------
// The two scenarios.
// ---------------------------------------------------------------------------------------------

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

async fn users(ring: &Ring, sessions: bool) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for (i, name) in USERS.iter().enumerate() {
        users.push(User::new(name, i, ring, sessions).await?);
    }
    Ok(users)
}

/// Blocks `victim` from every other node and prints it; returns the nodes users keep using.
async fn isolate(ring: &Ring, victim: usize, why: &str) -> anyhow::Result<Vec<usize>> {
    let others: Vec<usize> = ring.all().into_iter().filter(|&i| i != victim).collect();
    ring.block(victim, &others).await?;
    println!(
        "\n== node {victim} ({why}) now drops every request it sends to its peers: what it \
         coordinates stays on it alone; users keep to nodes {others:?}"
    );
    Ok(others)
}

async fn kill_and_wait(ring: &mut Ring, victim: usize, others: &[usize]) -> anyhow::Result<()> {
    ring.kill(victim)?;
    println!("\n== node {victim} killed (SIGKILL); waiting for the ring of {others:?}");
    let t = Instant::now();
    ring.wait_for(others).await?;
    println!("== ring of {others:?} converged in {:.1?}", t.elapsed());
    Ok(())
}

async fn restart_and_wait(ring: &mut Ring, victim: usize) -> anyhow::Result<()> {
    let bootstrap = ring.all().into_iter().find(|&i| i != victim);
    ring.spawn(victim, bootstrap)?;
    println!("\n== node {victim} restarted on its data directory; waiting for the ring of five");
    let t = Instant::now();
    ring.wait_for(&ring.all()).await?;
    println!("== ring of five converged in {:.1?}", t.elapsed());
    Ok(())
}

async fn board(sessions: bool) -> anyhow::Result<Tally> {
    let mut ring = Ring::start(NODES).await?;
    println!(
        "ring of {NODES} nodes up (N=3, W=1, R=1, anti-entropy every 10 s), logs in {}",
        ring.dir.path().display()
    );
    let mut tally = Tally::default();
    let mut us = users(&ring, sessions).await?;
    let all = ring.all();
    let t = &mut tally;
    let [alice, bob, carol, dave] = &mut us[..] else {
        unreachable!("four users")
    };

    println!("\n== every node up");
    alice
        .post(&ring, &all, "p01", "Welcome to the board", t)
        .await?;
    bob.reply(&ring, &all, "p02", "p01", "Thanks, glad to be here", t)
        .await?;
    carol
        .post(&ring, &all, "p03", "How many hops does a lookup take?", t)
        .await?;
    dave.reply(&ring, &all, "p04", "p03", "About half of log2 N", t)
        .await?;
    alice
        .reply(&ring, &all, "p05", "p04", "Section 6.3 of the paper", t)
        .await?;
    carol
        .reply(&ring, &all, "p06", "p02", "Welcome, bob", t)
        .await?;
    for u in [&mut *alice, &mut *bob, &mut *carol, &mut *dave] {
        u.view(&ring, &all, t).await?;
    }

    // The next root post lands on the victim, its owner, cut off before the post is written;
    // the ids are picked so that the lists and the replies live elsewhere: then the replies
    // stay visible while their parent is gone, which is the case the rule is about.
    let lists = ring.owner(0, "threads").await?;
    let mut n = 7;
    let (root, victim) = loop {
        let id = format!("p{n:02}");
        let o = ring.owner(0, &format!("post/{id}")).await?;
        if o != lists && ring.owner(0, &format!("thread/{id}")).await? != o {
            break (id, o);
        }
        n += 1;
    };
    let mut ids = Vec::new();
    while ids.len() < 3 {
        n += 1;
        let id = format!("p{n:02}");
        if ring.owner(0, &format!("post/{id}")).await? != victim {
            ids.push(id);
        }
    }
    let why = format!("the owner of post/{root}");
    let others = isolate(&ring, victim, &why).await?;
    bob.post(&ring, &others, &root, "Is a node down?", t)
        .await?;
    carol
        .reply(&ring, &others, &ids[0], &root, "Looks like it", t)
        .await?;
    dave.reply(&ring, &others, &ids[1], &ids[0], "Mine answers slowly", t)
        .await?;
    kill_and_wait(&mut ring, victim, &others).await?;

    println!("\n== node {victim} is gone with the only copy of post {root}");
    for u in [&mut *alice, &mut *bob, &mut *carol, &mut *dave] {
        u.view(&ring, &others, t).await?;
    }
    alice
        .reply(&ring, &others, &ids[2], &ids[1], "Same here", t)
        .await?;
    bob.reply(&ring, &others, "p99", "p05", "Thanks for the pointer", t)
        .await?;
    for u in [&mut *alice, &mut *bob, &mut *carol, &mut *dave] {
        u.view(&ring, &others, t).await?;
    }

    restart_and_wait(&mut ring, victim).await?;
    // Anti-entropy and the restarted node's rejoin bring its writes back within a few sync
    // rounds; poll (each view is checked) until nobody is waiting, or give up after a while.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let before = tally.waiting + tally.unreadable;
        for u in us.iter_mut() {
            u.view(&ring, &all, &mut tally).await?;
        }
        if tally.waiting + tally.unreadable == before || Instant::now() > deadline {
            break;
        }
        println!("(some posts still waiting; reading again in 2 s)");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(tally)
}

// "You are the last one." The warning is only as good as the member list it reads, and a
// member list read from a lagging copy lies in two ways that the session guarantees exclude:
//
// - Monotonic reads: carol saw alice and bob leave; a later read from a copy that never got
//   their leaves would show them back, and carol would be told she is not alone after all (or
//   dave, who was warned he is the last one, would later see the thread full again). With the
//   session, that read is refused (SessionUnmet) instead: "waiting", never "back".
// - Read your writes: alice left; a read that still lists her would tell her she is a member,
//   and, had she been one of the last two, would warn the other one too late or not at all.
//   With the session, her read must include her own leave.
//
// Without the guarantees the warning can come twice, or never, or to someone who has left.
async fn last_one(sessions: bool) -> anyhow::Result<Tally> {
    let mut ring = Ring::start(NODES).await?;
    println!(
        "ring of {NODES} nodes up (N=3, W=1, R=1, anti-entropy every 10 s), logs in {}",
        ring.dir.path().display()
    );
    let mut tally = Tally::default();
    let mut us = users(&ring, sessions).await?;
    let mut history: Vec<MemberHistory> = vec![MemberHistory::default(); us.len()];
    let key = "members/t1";
    let all = ring.all();

    println!("\n== every node up; everybody joins thread t1");
    for u in us.iter_mut() {
        update_members(u, &ring, &all, key, &mut tally, |m, me| {
            m.joined.insert(me.to_string());
        })
        .await?;
        println!("{} joined t1", u.tag());
    }
    read_all(&mut us, &mut history, &ring, &all, key, &mut tally).await?;

    let victim = ring.owner(0, key).await?;
    let others = isolate(&ring, victim, "the owner of members/t1").await?;
    for i in [0, 1] {
        leave(&mut us[i], &mut history[i], &ring, &others, key, &mut tally).await?;
    }
    // carol sees alice and bob gone; from now on she must never see them back.
    read_one(&mut us[2], &mut history[2], &ring, &others, key, &mut tally).await?;
    kill_and_wait(&mut ring, victim, &others).await?;

    println!("\n== node {victim} is gone with the only copy of alice's and bob's leaves");
    read_all(&mut us, &mut history, &ring, &others, key, &mut tally).await?;
    leave(&mut us[2], &mut history[2], &ring, &others, key, &mut tally).await?;
    read_all(&mut us, &mut history, &ring, &others, key, &mut tally).await?;

    restart_and_wait(&mut ring, victim).await?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !history[2].left_myself && Instant::now() < deadline {
        leave(&mut us[2], &mut history[2], &ring, &all, key, &mut tally).await?;
        if !history[2].left_myself {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    loop {
        let before = tally.waiting;
        read_all(&mut us, &mut history, &ring, &all, key, &mut tally).await?;
        if tally.waiting == before || Instant::now() > deadline {
            break;
        }
        println!("(some reads still waiting; reading again in 2 s)");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(tally)
}

/// Read-modify-write of a member list: `change` is given the union of the siblings read.
async fn update_members(
    u: &mut User,
    ring: &Ring,
    usable: &[usize],
    key: &str,
    tally: &mut Tally,
    change: impl FnOnce(&mut Members, &str),
) -> Result<Members, Error> {
    let read = u
        .read(ring, usable, key, tally)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))??;
    let mut m = Members::decode(&read.values);
    change(&mut m, &u.name);
    u.hop(ring, usable)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    u.client
        .write(key.as_bytes(), &m.encode(), &read.context)
        .await?;
    Ok(m)
}

async fn leave(
    u: &mut User,
    h: &mut MemberHistory,
    ring: &Ring,
    usable: &[usize],
    key: &str,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let res = update_members(u, ring, usable, key, tally, |m, me| {
        m.left.insert(me.to_string());
    })
    .await;
    match res {
        Ok(m) => {
            h.left_myself = true;
            h.seen_left.extend(m.left);
            println!("{} left t1", u.tag());
        }
        Err(e) => println!("{} cannot leave t1 yet: {e}", u.tag()),
    }
    Ok(())
}

async fn read_all(
    us: &mut [User],
    history: &mut [MemberHistory],
    ring: &Ring,
    usable: &[usize],
    key: &str,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    for (u, h) in us.iter_mut().zip(history.iter_mut()) {
        read_one(u, h, ring, usable, key, tally).await?;
    }
    Ok(())
}

/// One user reads the member list, is judged, and is warned if it is the last one.
async fn read_one(
    u: &mut User,
    h: &mut MemberHistory,
    ring: &Ring,
    usable: &[usize],
    key: &str,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let read = u.read(ring, usable, key, tally).await?;
    tally.views += 1;
    tally.saw_session(u);
    let m = match read {
        Ok(r) => Members::decode(&r.values),
        Err(e @ Error::SessionUnmet { .. }) => {
            tally.waiting += 1;
            println!("{} t1: waiting ({e})", u.tag());
            return Ok(());
        }
        Err(e) => {
            tally.unreadable += 1;
            println!("{} t1: unreadable ({e})", u.tag());
            return Ok(());
        }
    };
    let live = m.live();
    let names: Vec<&str> = live.iter().map(String::as_str).collect();
    let mut line = format!("{} t1 members: {}", u.tag(), names.join(", "));
    if live.len() == 1 && live.contains(&u.name) {
        line.push_str(&format!(
            "  -> \"{}, you are the last one in thread t1\"",
            u.name
        ));
    }
    println!("{line}");
    for v in h.judge(&u.name, &m) {
        let v = format!("VIOLATION: {v}");
        println!("  {v}");
        tally.violations.push(v);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sessions = !args.iter().any(|a| a == "--no-sessions");
    let last = args.iter().any(|a| a == "--last-one");
    if let Some(bad) = args
        .iter()
        .find(|a| !["--no-sessions", "--last-one"].contains(&a.as_str()))
    {
        eprintln!("bulletin_board: unknown argument {bad:?}; try --last-one or --no-sessions");
        return ExitCode::from(2);
    }
    if !sessions {
        println!("(no sessions: every client reads whatever copy its key's owner has)");
    }
    let result = if last {
        last_one(sessions).await
    } else {
        board(sessions).await
    };
    let tally = match result {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bulletin_board: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("\n== summary");
    println!(
        "views checked: {}; violations: {}; reads waiting (SessionUnmet): {}; unreadable: {}",
        tally.views,
        tally.violations.len(),
        tally.waiting,
        tally.unreadable
    );
    if sessions {
        let (k, u, b, who) = &tally.max_session;
        println!("largest session: {k} keys, {u} unstable, {b} bytes saved ({who})");
        let (n, b, key) = &tally.max_deps;
        println!("largest dependency set read with a value: {n} deps, {b} bytes ({key})");
    }
    for v in &tally.violations {
        println!("{v}");
    }
    if tally.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(author: &str, parent: Option<&str>) -> Seen {
        Seen::Shown(Post {
            author: author.into(),
            thread: "p01".into(),
            parent: parent.map(str::to_string),
            text: "hi".into(),
        })
    }

    fn view(posts: &[(&str, Seen)]) -> ThreadView {
        ThreadView {
            root: "p01".into(),
            posts: posts
                .iter()
                .map(|(id, s)| (id.to_string(), s.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_reply_shown_with_its_parent_absent_is_an_orphan() {
        let bad = view(&[
            ("p01", post("alice", None)),
            ("p02", Seen::Absent),
            ("p03", post("carol", Some("p02"))),
        ]);
        assert_eq!(orphans(&bad), vec![("p03".to_string(), "p02".to_string())]);
        let unread = view(&[("p03", post("carol", Some("p02")))]);
        assert_eq!(
            orphans(&unread).len(),
            1,
            "a parent never read is not shown"
        );
    }

    #[test]
    fn a_reply_whose_parent_is_shown_or_waiting_is_not() {
        let good = view(&[
            ("p01", post("alice", None)),
            ("p02", Seen::Waiting("session unmet".into())),
            ("p03", post("carol", Some("p02"))),
            ("p04", post("dave", Some("p01"))),
            ("p05", Seen::Absent),
        ]);
        assert!(orphans(&good).is_empty());
    }

    #[test]
    fn posts_and_sets_round_trip() {
        let Seen::Shown(p) = post("bob", Some("p01")) else {
            unreachable!()
        };
        assert_eq!(Post::decode(&p.encode()), Some(p));
        let set: BTreeSet<String> = ["p01".to_string(), "p02".to_string()].into();
        let sibling = encode_set(&["p03".to_string()].into());
        assert_eq!(decode_set(&[encode_set(&set), sibling]).len(), 3);
    }

    #[test]
    fn a_member_seen_leaving_who_comes_back_breaks_monotonic_reads() {
        let joined: BTreeSet<String> = USERS.iter().map(|s| s.to_string()).collect();
        let fresh = Members {
            joined: joined.clone(),
            left: ["alice".to_string(), "bob".to_string()].into(),
        };
        let stale = Members {
            joined,
            left: BTreeSet::new(),
        };
        let mut carol = MemberHistory::default();
        assert!(carol.judge("carol", &fresh).is_empty());
        let broken = carol.judge("carol", &stale);
        assert_eq!(broken.len(), 2, "{broken:?}");
        let mut alice = MemberHistory {
            left_myself: true,
            ..MemberHistory::default()
        };
        let broken = alice.judge("alice", &stale);
        assert!(broken[0].starts_with("read your writes"), "{broken:?}");
        assert!(alice.judge("alice", &fresh).is_empty());
    }

    #[test]
    fn merged_member_lists_never_bring_back_who_left() {
        let a = Members {
            joined: ["alice".to_string(), "bob".to_string()].into(),
            left: ["alice".to_string()].into(),
        };
        let b = Members {
            joined: ["alice".to_string(), "bob".to_string()].into(),
            left: BTreeSet::new(),
        };
        let m = Members::decode(&[a.encode(), b.encode()]);
        assert_eq!(m.live(), ["bob".to_string()].into());
    }
}
