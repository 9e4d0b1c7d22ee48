//! reqwest clients for tests. The workspace builds reqwest without a crypto provider of its own
//! (see the workspace Cargo.toml): a client built before one is installed panics, so tests take
//! their clients from here rather than from `reqwest::Client::new()`.

/// Makes rustls' `ring` provider the process default, as the binaries do at start-up.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `reqwest::Client::builder()`, with the crypto provider installed and no system CA roots.
///
/// Tests talk to loopback servers; left to itself, reqwest 0.13 reads and parses the system's CA
/// store for every client it builds, which in a debug build made tests building dozens of
/// clients at once miss their deadlines. A TLS test adds its own root
/// (`add_root_certificate`).
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tls_certs_only(std::iter::empty())
}

/// A client with reqwest's defaults.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("reqwest client")
}
