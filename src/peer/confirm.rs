//! Confirmations between cluster members (`on_store_loss = "keep-if-peers-confirm"`,
//! protocol 1.4): the active member asks every other member named in `[[cluster.members]]`
//! "I act as active in term N; do you confirm?", and each answers with a promise not to take
//! over for a while, or why not (the rule is the election's: `cluster::election`).
//!
//! An ask is one connection: TLS 1.3 with a certificate from the cluster's CA both ways, the
//! hello (channel `Confirm`), one `ConfirmAsk`, one `ConfirmAnswer`, close. The listener
//! admits only the members' addresses before TLS, then only a certificate that names the
//! member the hello names, connecting from that member's address; every step has a
//! deadline, the connections served at once are bounded, and the answer comes from the
//! node's election task over a bounded queue (a full queue is a refusal, never a wait).

use super::frame::{self, Channel, PeerMessage};
use super::tls::PeerTls;
use crate::engine::NodeId;
use crate::telemetry;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, warn, Instrument};

/// A confirmation frame is tiny: anything larger is not one.
const MAX_FRAME: usize = 4096;
/// Connections served at once, per member.
const PER_MEMBER: usize = 4;
/// A whole inbound exchange, from accept to answer written (the asker waits a quarter
/// lease time at most).
const SERVE_WITHIN: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of descriptors), not to spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// One other member: its id, where its listener is, and TLS that accepts only its certificate.
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Its `[cluster.peer_link]` listener.
    pub address: SocketAddr,
    tls: PeerTls,
}

/// The other members, and this node's own id and address.
pub struct Members {
    own: NodeId,
    source: IpAddr,
    others: Vec<Member>,
}

/// Why the members could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// A certificate, key or CA file.
    #[error("cluster peer link: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The listener.
    #[error("cluster peer link: cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// One ask, for the election's task: who asks, in which term, and where the answer goes.
pub struct ConfirmRequest {
    /// The asking member.
    pub from: String,
    /// Its term.
    pub term: u64,
    /// How long it says it may still act.
    pub asker_left: Duration,
    /// The promise (how long), or why not.
    pub reply: oneshot::Sender<Result<Duration, String>>,
}

impl Members {
    /// Every member but `own`, each with TLS that accepts only its certificate.
    pub fn load(
        own: &NodeId,
        source: IpAddr,
        members: &[(String, SocketAddr)],
        (ca, cert, key): (&std::path::Path, &std::path::Path, &std::path::Path),
    ) -> Result<Self, ConfirmError> {
        let mut others = Vec::new();
        for (id, address) in members.iter().filter(|(id, _)| *id != own.0) {
            let id = NodeId::from(id.as_str());
            let tls = PeerTls::load(ca, cert, key, &id)?;
            others.push(Member {
                id,
                address: *address,
                tls,
            });
        }
        Ok(Members {
            own: own.clone(),
            source,
            others,
        })
    }

    /// The other members' ids.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.others.iter().map(|m| m.id.0.as_str())
    }
}

/// Serves other members' asks until `answers` is closed.
pub async fn serve(
    listener: TcpListener,
    members: Arc<Members>,
    answers: mpsc::Sender<ConfirmRequest>,
) {
    // Per source address: whoever else shares a member's address cannot take its slots.
    let slots: Vec<(IpAddr, Arc<Semaphore>)> = members
        .others
        .iter()
        .map(|m| {
            (
                m.address.ip().to_canonical(),
                Arc::new(Semaphore::new(PER_MEMBER)),
            )
        })
        .collect();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "cluster peer link: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        if answers.is_closed() {
            return;
        }
        let source = addr.ip().to_canonical();
        let Some((_, member_slots)) = slots.iter().find(|(ip, _)| *ip == source) else {
            // Before TLS: a stranger costs an accept and a close.
            telemetry::peer_connection("in", "stranger");
            continue;
        };
        let Ok(slot) = member_slots.clone().try_acquire_owned() else {
            telemetry::limit_hit("peer_confirm");
            continue;
        };
        let (members, answers) = (members.clone(), answers.clone());
        let span = tracing::debug_span!("confirm_in", peer.addr = %addr);
        tokio::spawn(
            async move {
                let answered = tokio::time::timeout(
                    SERVE_WITHIN,
                    answer(stream, addr.ip(), &members, &answers),
                )
                .await;
                match answered {
                    Ok(Ok(())) => telemetry::peer_connection("in", "confirm"),
                    Ok(Err(why)) => {
                        telemetry::peer_connection("in", "refused");
                        debug!("cluster peer link: refused an ask ({why})");
                    }
                    Err(_) => {
                        telemetry::peer_connection("in", "refused");
                        debug!("cluster peer link: an ask was not done in time");
                    }
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Authenticates one inbound connection and answers its one ask.
async fn answer(
    stream: TcpStream,
    source: IpAddr,
    members: &Members,
    answers: &mpsc::Sender<ConfirmRequest>,
) -> Result<(), String> {
    stream.set_nodelay(true).ok();
    // Any member's setup accepts: they share the CA and our certificate.
    let acceptor = &members
        .others
        .first()
        .ok_or("no other member")?
        .tls
        .acceptor;
    let mut stream = acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let mut buffer = Vec::new();
    let hello = frame::read_message(&mut stream, &mut buffer, MAX_FRAME).await;
    let from = match hello {
        Ok(PeerMessage::Hello {
            channel: Channel::Confirm,
            node_id,
            version,
        }) if version.compatible_with(crate::engine::ProtocolVersion::CURRENT) => node_id,
        Ok(other) => return Err(format!("not a confirm hello: {other:?}")),
        Err(error) => return Err(format!("bad hello: {error}")),
    };
    // The hello's member, from its own address, with its own certificate.
    let certificates = stream.get_ref().1.peer_certificates();
    let member = members
        .others
        .iter()
        .find(|m| m.id == from)
        .filter(|m| m.address.ip().to_canonical() == source.to_canonical())
        .filter(|m| m.tls.names_peer(certificates))
        .ok_or_else(|| format!("{from} is not a member connecting as itself"))?;
    let (term, acting_ms) = match frame::read_message(&mut stream, &mut buffer, MAX_FRAME).await {
        Ok(PeerMessage::ConfirmAsk { term, acting_ms }) => (term, acting_ms),
        Ok(other) => return Err(format!("not an ask: {other:?}")),
        Err(error) => return Err(format!("bad ask: {error}")),
    };
    let (reply, answered) = oneshot::channel();
    let request = ConfirmRequest {
        from: member.id.0.clone(),
        term,
        // Not said: vouch for it no longer than our own lease does.
        asker_left: Duration::from_millis(acting_ms.unwrap_or(0)),
        reply,
    };
    let verdict = match answers.try_send(request) {
        Ok(()) => answered
            .await
            .unwrap_or_else(|_| Err("the node is shutting down".to_owned())),
        Err(_) => Err("the node is busy".to_owned()),
    };
    let message = match verdict {
        Ok(promised) => PeerMessage::ConfirmAnswer {
            promised_ms: u64::try_from(promised.as_millis()).unwrap_or(u64::MAX),
            refused: None,
        },
        Err(why) => PeerMessage::ConfirmAnswer {
            promised_ms: 0,
            refused: Some(why),
        },
    };
    frame::write_message(&mut stream, &message)
        .await
        .map_err(|e| format!("the answer was not delivered: {e}"))
}

/// Asks every other member to confirm this node in `term`, all at once, each within
/// `within`: the shortest promise if every one confirmed, or who did not and why.
pub async fn ask_all(
    members: &Members,
    term: u64,
    acting_left: Duration,
    within: Duration,
) -> Result<Duration, String> {
    if members.others.is_empty() {
        return Err("no other member to confirm".to_owned());
    }
    let asks = members.others.iter().map(|member| async move {
        let asked = tokio::time::timeout(within, ask(members, member, term, acting_left)).await;
        match asked {
            Ok(Ok(promised)) => Ok(promised),
            Ok(Err(why)) => Err(format!("{}: {why}", member.id)),
            Err(_) => Err(format!("{}: no answer within {within:?}", member.id)),
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut shortest = Duration::MAX;
    let mut refusals = Vec::new();
    for answer in answers {
        match answer {
            Ok(promised) => shortest = shortest.min(promised),
            Err(why) => refusals.push(why),
        }
    }
    if refusals.is_empty() {
        Ok(shortest)
    } else {
        Err(refusals.join("; "))
    }
}

/// One ask of one member.
async fn ask(
    members: &Members,
    member: &Member,
    term: u64,
    acting_left: Duration,
) -> Result<Duration, String> {
    let socket = match member.address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    // From our own address, which the member's listener admits.
    if members.source.is_ipv4() == member.address.is_ipv4() {
        socket
            .bind(SocketAddr::new(members.source, 0))
            .map_err(|e| format!("cannot bind to {}: {e}", members.source))?;
    }
    let tcp = socket
        .connect(member.address)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let mut stream = member
        .tls
        .connector
        .connect(member.tls.peer_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let hello = PeerMessage::Hello {
        version: crate::config::version::spoken_protocol_version(),
        node_id: members.own.clone(),
        channel: Channel::Confirm,
    };
    frame::write_message(&mut stream, &hello)
        .await
        .map_err(|e| e.to_string())?;
    let acting_ms = u64::try_from(acting_left.as_millis()).unwrap_or(u64::MAX);
    let ask = PeerMessage::ConfirmAsk {
        term,
        acting_ms: Some(acting_ms),
    };
    frame::write_message(&mut stream, &ask)
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = Vec::new();
    match frame::read_message(&mut stream, &mut buffer, MAX_FRAME).await {
        Ok(PeerMessage::ConfirmAnswer {
            refused: Some(why), ..
        }) => Err(why),
        Ok(PeerMessage::ConfirmAnswer { promised_ms, .. }) => {
            Ok(Duration::from_millis(promised_ms))
        }
        Ok(other) => Err(format!("not an answer: {other:?}")),
        Err(error) => Err(format!("no answer: {error}")),
    }
}

/// Binds the listener.
pub async fn listen(address: SocketAddr) -> Result<TcpListener, ConfirmError> {
    TcpListener::bind(address)
        .await
        .map_err(|e| ConfirmError::Listen(address, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn certs(node: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs");
        (
            dir.join("ca.pem"),
            dir.join(format!("{node}.pem")),
            dir.join(format!("{node}.key")),
        )
    }

    /// `own` on `source`, whose one other member is `other` at `address`, presenting the
    /// certificate of `cert_of` (the test pair's: a on 127.0.0.1, b on 127.0.0.2).
    fn members(
        own: &str,
        source: &str,
        other: &str,
        address: SocketAddr,
        cert_of: &str,
    ) -> Members {
        let (ca, cert, key) = certs(cert_of);
        let list = [(other.to_owned(), address)];
        let source = source.parse().expect("address");
        Members::load(&NodeId::from(own), source, &list, (&ca, &cert, &key)).expect("certificates")
    }

    /// a's listener, answering every ask with `verdict`; b's listener address is 127.0.0.2.
    async fn a_answering(verdict: Result<Duration, String>) -> SocketAddr {
        let listener = listen("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("listen");
        let address = listener.local_addr().expect("address");
        let b = "127.0.0.2:7801".parse().expect("address");
        let a = Arc::new(members("a", "127.0.0.1", "b", b, "a"));
        let (answers, mut asks) = mpsc::channel::<ConfirmRequest>(1);
        tokio::spawn(serve(listener, a, answers));
        tokio::spawn(async move {
            while let Some(ask) = asks.recv().await {
                let verdict = verdict
                    .clone()
                    .map_err(|why| format!("{why} ({} {})", ask.from, ask.term));
                let _ = ask.reply.send(verdict);
            }
        });
        address
    }

    #[tokio::test]
    async fn a_member_asks_another_and_gets_its_promise_or_its_refusal() {
        let a = a_answering(Ok(Duration::from_secs(2))).await;
        let b = members("b", "127.0.0.2", "a", a, "b");
        let within = Duration::from_secs(2);
        let left = Duration::from_millis(1500);
        assert_eq!(
            ask_all(&b, 42, left, within).await,
            Ok(Duration::from_secs(2))
        );
        let a = a_answering(Err("no".to_owned())).await;
        let b = members("b", "127.0.0.2", "a", a, "b");
        let refused = ask_all(&b, 42, left, within).await.expect_err("refused");
        assert!(refused.contains("a: no (b 42)"), "{refused}");
    }

    #[tokio::test]
    async fn a_stranger_or_a_member_posing_as_another_gets_no_answer() {
        let a = a_answering(Ok(Duration::from_secs(2))).await;
        let within = Duration::from_secs(2);
        // From an address no member has: closed before TLS.
        let stranger = members("b", "127.0.0.3", "a", a, "b");
        let left = Duration::from_millis(1500);
        assert!(ask_all(&stranger, 42, left, within).await.is_err());
        // From b's address, saying it is b, with a's own certificate.
        let posing = members("b", "127.0.0.2", "a", a, "a");
        assert!(ask_all(&posing, 42, left, within).await.is_err());
        // Nobody to ask is no confirmation.
        let alone = Members {
            own: NodeId::from("b"),
            source: "127.0.0.2".parse().expect("address"),
            others: Vec::new(),
        };
        assert!(ask_all(&alone, 42, left, within).await.is_err());
    }

    #[tokio::test]
    async fn a_member_address_holding_every_slot_is_refused_until_one_frees() {
        let a = a_answering(Ok(Duration::from_secs(2))).await;
        let b = members("b", "127.0.0.2", "a", a, "b");
        let within = Duration::from_secs(2);
        let left = Duration::from_millis(1500);
        // Connections from b's address that never say anything hold its slots.
        let mut idle = Vec::new();
        for _ in 0..PER_MEMBER {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.2:0".parse().expect("address"))
                .expect("bind");
            idle.push(socket.connect(a).await.expect("connect"));
        }
        // Accepted in order: the ask comes after every idle connection holds its slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            ask_all(&b, 42, left, within).await.is_err(),
            "an ask beyond the slots was answered"
        );
        // Each idle one is dropped once its time is up: the member is answered again.
        tokio::time::sleep(SERVE_WITHIN).await;
        assert_eq!(
            ask_all(&b, 42, left, within).await,
            Ok(Duration::from_secs(2))
        );
        drop(idle);
    }
}
