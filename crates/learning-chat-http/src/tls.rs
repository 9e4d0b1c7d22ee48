//! TLS on the service's port (`server.tls_cert` / `server.tls_key`): rustls on the `ring`
//! provider, ALPN `h2` then `http/1.1`; and the same provider for the outgoing HTTP clients
//! ([`install_crypto_provider`]).
//!
//! The certificate is served through a resolver rather than baked into the rustls config, so a
//! reload swaps only the key pair new handshakes get: connections already open keep theirs and
//! are never dropped. A reload happens on SIGHUP and when either file's modification time
//! changes (checked every `server.tls_reload_check_ms`); a pair that does not load or does not
//! match is refused with an error line and the previous one stays in use.

use anyhow::Context as _;
use learning_chat_engine::config::ServerSettings;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// Makes rustls' `ring` provider the process default; call before building any HTTP client.
///
/// The workspace builds reqwest with `rustls-no-provider` (its own default, aws-lc-rs, is minutes
/// of C to build, with cmake on some targets), and such a reqwest panics when it builds a client
/// while no provider is installed. A process default rather than a TLS config handed to each client:
/// the Sentry transport and the OTLP exporter build their reqwest clients themselves, and only
/// the default reaches them. Certificates are still checked by reqwest's verifier against the
/// system's roots.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already (an earlier call, or a program
    // embedding the library chose one): clients use that one.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
}

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The TLS side of the listener: the acceptor and the reloadable certificate behind it.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadableCertificate>,
}

impl Tls {
    /// TLS as configured in `[server]`: `None` when no certificate is set; an error when the
    /// files do not load (the service refuses to start rather than serve plain text).
    pub fn from_settings(server: &ServerSettings) -> anyhow::Result<Option<Tls>> {
        if server.tls_cert.is_empty() && server.tls_key.is_empty() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(ReloadableCertificate::load(
            PathBuf::from(&server.tls_cert),
            PathBuf::from(&server.tls_key),
            provider.clone(),
        )?);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        }))
    }

    /// The handshake side, for the accept loop.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reloads the certificate and key from their files now (what SIGHUP does).
    pub fn reload(&self) -> anyhow::Result<()> {
        self.certificate.reload()
    }

    /// Reloads on SIGHUP and when the files change, until the returned task is aborted.
    /// SIGHUP is caught from this call on (not from the task's first poll): a signal sent
    /// right after start-up must not take the default action, exit.
    pub fn watch_for_changes(self, check_every: Duration) -> impl Future<Output = ()> + Send {
        // Registering replaces SIGHUP's default action (exit) for the life of the process,
        // which is only wanted when there is something to reload.
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(
                    "cannot listen for SIGHUP; certificate reload by file change only: {e}"
                );
                None
            }
        };
        self.watch(hangup, check_every)
    }

    async fn watch(self, mut hangup: Option<tokio::signal::unix::Signal>, check_every: Duration) {
        let mut tick = (!check_every.is_zero()).then(|| {
            let mut tick = tokio::time::interval(check_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            let by_signal = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                _ = async { match tick.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } } => false,
                else => return,
            };
            if !by_signal && !self.certificate.files_changed() {
                continue;
            }
            match self.reload() {
                Ok(()) => tracing::info!(
                    by_signal,
                    "TLS certificate reloaded; new connections use it, open ones keep theirs"
                ),
                Err(e) => tracing::error!(
                    by_signal,
                    "TLS certificate reload failed; still serving the previous one: {e:#}"
                ),
            }
        }
    }
}

/// The certificate and key new handshakes get, swapped whole on reload.
#[derive(Debug)]
struct ReloadableCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of the files last loaded (or last seen failing).
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadableCertificate {
    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<ReloadableCertificate> {
        let stamps = (modified(&cert_path), modified(&key_path));
        let key = load_pair(&cert_path, &key_path, &provider)?;
        Ok(ReloadableCertificate {
            cert_path,
            key_path,
            provider,
            current: RwLock::new(Arc::new(key)),
            stamps: Mutex::new(stamps),
        })
    }

    fn reload(&self) -> anyhow::Result<()> {
        let stamps = (modified(&self.cert_path), modified(&self.key_path));
        // Recorded even on failure: a half-written pair is retried when it changes again (or
        // on SIGHUP), not logged as an error every check.
        *self.stamps.lock() = stamps;
        let key = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write() = Arc::new(key);
        Ok(())
    }

    fn files_changed(&self) -> bool {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        *self.stamps.lock() != now
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    CertifiedKey::from_der(chain, private, provider).with_context(|| {
        format!(
            "{} and {} do not make a usable key pair",
            cert.display(),
            key.display()
        )
    })
}
