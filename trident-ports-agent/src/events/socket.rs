//! The agent's local unix socket and the `flows` command that talks to it.
//!
//! Protocol: the client sends one JSON line, `{"since_ms": N | null, "follow": bool}`; the agent
//! answers with JSON lines: the kept events of the last `since_ms` (all kept events when null),
//! then, when following, live events. A follower that falls behind gets `{"missed": N}` in place
//! of the events it lost.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use tracing::{debug, warn};

use super::{Output, Record, hub::Hub};

pub const DEFAULT_SOCKET: &str = "/run/trident-ports/agent.sock";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub follow: bool,
    /// `audit` or `enforce` sets this node's mode; `config` returns to the configuration's.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModeReply {
    pub mode: Option<crate::policy::Mode>,
    pub error: Option<String>,
}

/// Sets (Some) or clears (None) the node's mode override, returning the mode in force.
pub type ModeControl =
    Arc<dyn Fn(Option<crate::policy::Mode>) -> Result<crate::policy::Mode, String> + Send + Sync>;

#[derive(Debug, Serialize, Deserialize)]
pub struct Missed {
    pub missed: u64,
}

/// Binds the socket: root only (0600), or root and `group` (0660).
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = group {
        let gid =
            group_id(g).with_context(|| format!("unknown group `{g}` for {}", path.display()))?;
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or null.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: a non-null result points to a valid group entry until the next getgr* call.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

pub async fn serve(listener: UnixListener, hub: Arc<Hub>, control: ModeControl) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let hub = hub.clone();
                let control = control.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, hub, control).await {
                        debug!("flows client: {e:#}");
                    }
                });
            }
            Err(e) => {
                warn!("accepting on the flows socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(stream: UnixStream, hub: Arc<Hub>, control: ModeControl) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let req = parse_request(&line)?;
    if let Some(m) = req.mode.as_deref() {
        let reply = match wanted_mode(m).and_then(|w| control(w)) {
            Ok(mode) => ModeReply {
                mode: Some(mode),
                error: None,
            },
            Err(e) => ModeReply {
                mode: None,
                error: Some(e),
            },
        };
        write
            .write_all((serde_json::to_string(&reply)? + "\n").as_bytes())
            .await?;
        return Ok(());
    }
    let age = req.since_ms.map(Duration::from_millis);
    let (mut rx, history) = if req.follow {
        hub.follow(age)
    } else {
        (hub.subscribe_none(), hub.since(age))
    };
    let mut last = 0;
    for (n, r) in &history {
        write
            .write_all((serde_json::to_string(&**r)? + "\n").as_bytes())
            .await?;
        last = *n;
    }
    if !req.follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            // Already sent with the history.
            Ok((n, _)) if n <= last => {}
            Ok((_, r)) => {
                write
                    .write_all((serde_json::to_string(&*r)? + "\n").as_bytes())
                    .await?;
            }
            Err(RecvError::Lagged(n)) => {
                write
                    .write_all((serde_json::to_string(&Missed { missed: n })? + "\n").as_bytes())
                    .await?;
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// The request line a client sends.
pub fn parse_request(line: &str) -> anyhow::Result<Request> {
    serde_json::from_str(line).context("bad request")
}

/// The mode a request asks for: `Some` to set, `None` to return to the configuration's.
pub fn wanted_mode(m: &str) -> Result<Option<crate::policy::Mode>, String> {
    match m {
        "audit" => Ok(Some(crate::policy::Mode::Audit)),
        "enforce" => Ok(Some(crate::policy::Mode::Enforce)),
        "config" => Ok(None),
        other => Err(format!("unknown mode `{other}`: audit, enforce or config")),
    }
}

/// What `flows` shows: the command line and the library share this one struct.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Filter {
    #[arg(long, value_parser = ["denied", "audit", "notice"])]
    pub verdict: Option<String>,
    #[arg(long, value_parser = ["egress", "ingress"])]
    pub direction: Option<String>,
    /// Destination address or CIDR.
    #[arg(long, value_parser = crate::config::parse_net)]
    pub dst: Option<IpNet>,
    /// Source address or CIDR.
    #[arg(long, value_parser = crate::config::parse_net)]
    pub src: Option<IpNet>,
    /// Source or destination port.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_parser = ["tcp", "udp", "icmp", "icmpv6"])]
    pub proto: Option<String>,
    #[arg(long)]
    pub backend: Option<String>,
}

/// Splits "192.0.2.1:40000" or "[2001:db8::1]:2049" (or a bare address) into address and port.
fn split_endpoint(s: &str) -> (Option<std::net::IpAddr>, Option<u16>) {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return (Some(sa.ip()), Some(sa.port()));
    }
    (s.parse().ok(), None)
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        let (src, sport) = split_endpoint(&r.src);
        let (dst, dport) = split_endpoint(&r.dst);
        self.verdict.as_ref().is_none_or(|v| *v == r.verdict)
            && self.direction.as_ref().is_none_or(|d| *d == r.direction)
            && self.proto.as_ref().is_none_or(|p| *p == r.proto)
            && self
                .backend
                .as_ref()
                .is_none_or(|b| Some(b) == r.backend.as_ref())
            && self.dst.is_none_or(|n| dst.is_some_and(|a| n.contains(&a)))
            && self.src.is_none_or(|n| src.is_some_and(|a| n.contains(&a)))
            && self
                .port
                .is_none_or(|p| sport == Some(p) || dport == Some(p))
    }
}

/// `trident-ports-agent flows`: prints matching events; with `follow`, until interrupted.
pub async fn flows(
    path: PathBuf,
    since: Option<Duration>,
    follow: bool,
    filter: Filter,
    output: Output,
) -> anyhow::Result<()> {
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "connecting to the agent at {} (is it running? are you root or in its group?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let req = Request {
        since_ms: since.map(|d| d.as_millis() as u64),
        follow,
        mode: None,
    };
    write
        .write_all((serde_json::to_string(&req)? + "\n").as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        if let Ok(m) = serde_json::from_str::<Missed>(&line) {
            eprintln!(
                "flows: missed {} events (this follower fell behind)",
                m.missed
            );
            continue;
        }
        let rec: Record = serde_json::from_str(&line)
            .with_context(|| format!("bad event from the agent: {line}"))?;
        if !filter.matches(&rec) {
            continue;
        }
        let text = match output {
            Output::Json => line,
            Output::Text => rec.text(),
        };
        out.write_all((text + "\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// `trident-ports-agent mode audit|enforce|config`: switches this node's running agent.
pub async fn mode(path: PathBuf, mode: &str) -> anyhow::Result<crate::policy::Mode> {
    let stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("connecting to the agent at {}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let req = Request {
        mode: Some(mode.to_string()),
        ..Default::default()
    };
    write
        .write_all((serde_json::to_string(&req)? + "\n").as_bytes())
        .await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply: ModeReply =
        serde_json::from_str(&line).with_context(|| format!("bad reply: {line}"))?;
    match (reply.mode, reply.error) {
        (Some(m), _) => Ok(m),
        (_, Some(e)) => anyhow::bail!("{e}"),
        _ => anyhow::bail!("empty reply"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{events::hub::tests::rec, policy::Mode};

    /// One request line to a served socket; every line of the answer.
    async fn ask(path: &Path, request: &str) -> Vec<String> {
        let stream = UnixStream::connect(path).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(request.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn history_mode_switches_and_bad_requests_over_the_socket() {
        let path = std::env::temp_dir().join(format!("tp-socket-{}.sock", std::process::id()));
        let listener = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "root only without a group");
        let hub = Arc::new(Hub::new(10, 4));
        hub.publish(rec(1));
        hub.publish(rec(2));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let control: ModeControl = Arc::new(move |m| {
            seen.lock().unwrap().push(m);
            Ok(m.unwrap_or(Mode::Enforce))
        });
        tokio::spawn(serve(listener, hub, control));

        let all = ask(&path, "{}\n").await;
        assert_eq!(all.len(), 2, "{all:?}");
        let first: Record = serde_json::from_str(&all[0]).unwrap();
        assert_eq!(first.suppressed, 1, "oldest first");
        assert!(
            ask(&path, "{\"since_ms\": 0}\n").await.is_empty(),
            "nothing is that new"
        );

        let reply = ask(&path, "{\"mode\": \"audit\"}\n").await;
        let r: ModeReply = serde_json::from_str(&reply[0]).unwrap();
        assert_eq!(r.mode, Some(Mode::Audit));
        let reply = ask(&path, "{\"mode\": \"config\"}\n").await;
        let r: ModeReply = serde_json::from_str(&reply[0]).unwrap();
        assert_eq!(r.mode, Some(Mode::Enforce));
        let reply = ask(&path, "{\"mode\": \"loose\"}\n").await;
        let r: ModeReply = serde_json::from_str(&reply[0]).unwrap();
        assert!(r.error.unwrap().contains("unknown mode `loose`"));
        assert_eq!(
            *asked.lock().unwrap(),
            vec![Some(Mode::Audit), None],
            "an unknown mode never reaches the agent"
        );

        assert!(
            ask(&path, "not json\n").await.is_empty(),
            "a bad request is closed"
        );
        assert_eq!(ask(&path, "{}\n").await.len(), 2, "and the server goes on");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn filters_match_endpoints_prefixes_and_ports() {
        let r = rec(0);
        let f = |args: Filter| args.matches(&r);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            dst: Some("192.0.2.0/24".parse().unwrap()),
            port: Some(2),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            src: Some("198.51.100.0/24".parse().unwrap()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            backend: Some("nas".into()),
            ..Filter::default()
        }));
        assert_eq!(
            split_endpoint("[2001:db8::1]:2049"),
            (Some("2001:db8::1".parse().unwrap()), Some(2049))
        );
        assert_eq!(
            split_endpoint("192.0.2.9"),
            (Some("192.0.2.9".parse().unwrap()), None)
        );
    }
}
