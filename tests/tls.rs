//! `wss://` through rustls, the client's default transport: a TLS terminator with a self-signed certificate in
//! front of the reference server.

mod support;

use std::sync::Arc;

use presently::{Availability, Client, ConnectionState, Error, Status};
use support::*;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, RootCertStore};

/// Starts a TLS terminator for `localhost` forwarding to `backend`; returns its port and its certificate.
async fn tls_terminator(backend: std::net::SocketAddr) -> (u16, CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, cert)
}

fn trusting(cert: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn wss_works_end_to_end_with_a_trusted_certificate() {
    let server = start_server().await;
    let (port, cert) = tls_terminator(server.local_addr()).await;
    let url = format!("wss://localhost:{port}/v1/ws");
    let alice = Client::builder(&url)
        .token(token(&server, "alice"))
        .tls_config(trusting(cert))
        .build()
        .unwrap();
    alice.connect().await.unwrap();
    alice.set_status(Status::new(Availability::Busy)).unwrap();
    let bob = connected_client(&server, "bob").await;
    bob.subscribe(["alice"]).unwrap();
    until(&bob, "alice busy over wss", |c| {
        c.presence("alice").map(|p| p.availability) == Some(Availability::Busy)
    })
    .await;
}

#[tokio::test]
async fn the_default_roots_refuse_an_untrusted_certificate_with_a_clear_error() {
    let server = start_server().await;
    let (port, _cert) = tls_terminator(server.local_addr()).await;
    let client = Client::builder(format!("wss://localhost:{port}/v1/ws"))
        .token(token(&server, "alice"))
        .build()
        .unwrap();
    match client.connect().await {
        Err(Error::Unreachable { reason }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    assert!(matches!(
        client.state(),
        ConnectionState::Reconnecting { .. } | ConnectionState::Connecting { .. }
    ));
    client.close().await;
}
