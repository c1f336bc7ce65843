//! Both sides of the authenticating handshake against arbitrary bytes from the other side, and
//! the credential parsers (tokens files, `NAME:SECRET` tokens) against arbitrary text. Neither
//! side may panic or hang, and none may accept what did not prove the secret: against a node
//! that requires the cluster secret and tokens, no input is a successful handshake, and a
//! connector holding a secret never completes with an acceptor that cannot prove it.
#![no_main]

use chordkv_node::auth::{Gate, Secret, Token, Tokens};
use chordkv_node::wire::handshake::{self, Credential};
use chordkv_node::wire::Role;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(1);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fn secured() -> Gate {
    Gate {
        cluster: Some(Secret::new(b"the fuzzed cluster's secret.....").expect("secret")),
        tokens: Some(Arc::new(
            "read-write app:0123456789abcdef0123456789abcdef\n"
                .parse()
                .expect("tokens"),
        )),
    }
}

/// Runs `side` against a peer that writes `data` and then closes its end.
async fn against<T>(
    data: &[u8],
    side: impl AsyncFnOnce(&mut tokio::io::DuplexStream) -> T,
) -> T {
    let (mut peer, mut ours) = tokio::io::duplex(1 << 16);
    peer.write_all(data).await.expect("the pipe takes the input");
    // Closing our writing half ends the input: the side under test reads EOF after it.
    let (_peer_reads, mut peer_writes) = tokio::io::split(peer);
    let _ = peer_writes.shutdown().await;
    side(&mut ours).await
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let gate = secured();
        let accepted = against(data, async |s| handshake::accept(s, &gate, T).await).await;
        assert!(accepted.is_err(), "a fuzzed connector got in: {accepted:?}");
        let open = Gate::default();
        let _ = against(data, async |s| handshake::accept(s, &open, T).await).await;

        let secret = Credential::Cluster(Secret::new(b"the fuzzed cluster's secret.....").expect("secret"));
        let connected =
            against(data, async |s| handshake::connect(s, Role::Node, &secret, T).await).await;
        assert!(connected.is_err(), "a fuzzed acceptor proved the secret");
        let _ = against(data, async |s| {
            handshake::connect(s, Role::Client, &Credential::None, T).await
        })
        .await;
    });
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<Tokens>();
    if let Ok(token) = text.parse::<Token>() {
        assert!(!token.name.is_empty() && !token.name.contains(':'));
    }
});
