//! Keeps the SIP proxy's route keys at the pair's key, which lives in the replicated store
//! (so both nodes sign and verify with the same key, and answers still route after a
//! restart, a failover or a move of the service address). The active node makes the key
//! when there is none; the standby gets it by replication. Until a node has the pair's
//! key it uses a random one of its own, so nothing it did not forward is ever relayed.

use crate::front::sip::SharedRouteKeys;
use crate::sip::proxy::RouteKeys;
use crate::store::api::StoreHandle;
use std::time::Duration;
use tracing::{info, warn};

/// The store key holding the pair's route key (hex of 32 random bytes).
pub const ROUTE_KEY: &str = "_standby/sip-route-key";
/// How often the store is asked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// 32 random bytes from the operating system, or `None` if it has none to give.
pub fn random_secret() -> Option<[u8; 32]> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).ok()?;
    Some(secret)
}

/// Route keys for a node that has not heard the pair's key yet, and their secret.
pub fn local_keys() -> Option<([u8; 32], SharedRouteKeys)> {
    let secret = random_secret()?;
    let keys = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(RouteKeys::new(
        &secret, None,
    )));
    Some((secret, keys))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Runs until the store closes; `keys` start out as [`local_keys`] made them from `local`.
pub async fn sync(store: StoreHandle, keys: SharedRouteKeys, local: [u8; 32]) {
    let mut installed: Option<Vec<u8>> = Some(local.to_vec());
    let mut interval = tokio::time::interval(CHECK_EVERY);
    loop {
        interval.tick().await;
        let stored = match store.get(ROUTE_KEY).await {
            Ok(stored) => stored,
            Err(crate::store::api::StoreError::Closed) => return,
            Err(error) => {
                warn!(%error, "cannot read the SIP route key");
                continue;
            }
        };
        let secret = stored
            .and_then(|version| version.value)
            .and_then(|value| value.as_str().and_then(unhex));
        match secret {
            Some(secret) if installed.as_ref() != Some(&secret) => {
                // The key this node signed with so far still verifies answers in flight.
                let previous = installed.take();
                keys.store(std::sync::Arc::new(RouteKeys::new(
                    &secret,
                    previous.as_deref(),
                )));
                info!("SIP proxy uses the pair's route key");
                installed = Some(secret);
            }
            Some(_) => {}
            None => {
                // Only the active node's write succeeds; the standby waits for replication.
                if let Some(fresh) = random_secret() {
                    let _ = store
                        .write(ROUTE_KEY, Some(serde_json::Value::String(hex(&fresh))))
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_bad_text_is_refused() {
        let secret = random_secret().expect("randomness");
        assert_eq!(unhex(&hex(&secret)).as_deref(), Some(&secret[..]));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
        assert_ne!(random_secret(), random_secret());
    }
}
