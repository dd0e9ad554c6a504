//! The vocabulary every stage shares: transport protocols, port ranges and directions. The port
//! model, the configuration and the backends speak it as much as the compiled policy does.
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => trident_ports_common::PROTO_TCP,
            Proto::Udp => trident_ports_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            trident_ports_common::PROTO_TCP => Some(Proto::Tcp),
            trident_ports_common::PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        })
    }
}

/// An inclusive port range; a single port is `from == to`. Serialised as `[from, to]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "[u16; 2]", into = "[u16; 2]")]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl From<[u16; 2]> for PortRange {
    fn from([from, to]: [u16; 2]) -> Self {
        PortRange { from, to }
    }
}

impl From<PortRange> for [u16; 2] {
    fn from(r: PortRange) -> Self {
        [r.from, r.to]
    }
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        PortRange {
            from: port,
            to: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.from <= port && port <= self.to
    }

    /// Parses `"2049"` or `"1024-65535"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s, s),
        };
        let p = |x: &str| {
            x.parse::<u16>()
                .map_err(|_| format!("`{s}` is not a port or a port range (1-65535)"))
        };
        let (from, to) = (p(a)?, p(b)?);
        if from == 0 || from > to {
            return Err(format!("`{s}` is not a port or a port range (1-65535)"));
        }
        Ok(PortRange { from, to })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}
