//! Any bytes from a Postgres client, as Gannet's connection loop decodes them: the SSL
//! request and start-up message of a new connection, then (after the start-up) the query
//! protocol, and the SASL messages of a SCRAM login.
//!
//! pgwire 0.41's decoder panics on many malformed messages (a declared length below 4, a
//! body shorter than the fields it declares: Parse, Bind, SASLInitialResponse, ...). Gannet
//! contains that: its connection loop catches a panic while decoding and answers 08P01
//! (tests/hostile.rs), and it checks a SASLInitialResponse itself before pgwire decodes it.
//! So this target does the same: a panic inside `decode` is caught, as in the server, and
//! what is left to find is what catching cannot contain: aborts, unbounded allocation
//! (libFuzzer's -rss_limit_mb / -malloc_limit_mb), hangs, and panics in Gannet's own checks.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::messages::startup::PasswordMessageFamily;
use pgwire::tokio::server::PgWireMessageServerCodec;
use tokio_util::codec::Decoder;

#[path = "../../src/server/pg/sasl_check.rs"]
mod sasl_check;

fuzz_target!(|bytes: &[u8]| {
    // libfuzzer-sys makes every panic abort; panics inside pgwire's decoder unwind to the
    // catch below, as they do in the server.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 5433));
    let mut codec = PgWireMessageServerCodec::<()>::new(DefaultClient::new(addr, false));
    codec.client_info.set_state(match mode % 3 {
        0 => PgWireConnectionState::AwaitingSslRequest,
        1 => PgWireConnectionState::AwaitingStartup,
        _ => PgWireConnectionState::AuthenticationInProgress,
    });
    let mut buf = BytesMut::from(rest);
    for _ in 0..64 {
        let decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| codec.decode(&mut buf)));
        let Ok(Ok(Some(message))) = decoded else {
            return;
        };
        match message {
            PgWireFrontendMessage::SslNegotiation(_) => {
                codec
                    .client_info
                    .set_state(PgWireConnectionState::AwaitingStartup);
            }
            PgWireFrontendMessage::Startup(startup) => {
                let _ = format!("{startup:?}");
                codec
                    .client_info
                    .set_state(PgWireConnectionState::ReadyForQuery);
            }
            PgWireFrontendMessage::PasswordMessageFamily(PasswordMessageFamily::Raw(raw)) => {
                // What the SCRAM start-up makes of it, first or later in the exchange: the
                // first is decoded only once Gannet's check passes.
                if sasl_check::well_formed_sasl_initial_response(&raw) {
                    let _ = PasswordMessageFamily::Raw(raw.clone()).into_sasl_initial_response();
                }
                let _ = PasswordMessageFamily::Raw(raw).into_sasl_response();
            }
            other => {
                let _ = format!("{other:?}");
            }
        }
    }
});
