//! Options shared by `chrysalis verify`, `chat` and `serve`: where the shim is and how
//! far to trust it.

use std::path::PathBuf;

use chrysalis_client::attest::TrustOptions;
use chrysalis_client::transport::Endpoint;

/// Where the shim is and what evidence to accept.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The provider's shim, e.g. https://provider.example:8443 or http://127.0.0.1:8443.
    #[arg(long, value_name = "URL", env = "CHRYSALIS_URL")]
    pub url: String,
    /// Accept SIMULATED evidence from a dev-mode enclave. INSECURE: it proves nothing
    /// about the code or the machine; every output is then marked INSECURE.
    #[arg(long)]
    pub allow_simulated: bool,
    /// Published image manifests (a JSON file or a directory of them) whose launch
    /// measurements are acceptable; without it the measurement is shown, not compared.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// PEM file of the CA (or self-signed certificate) to trust for an https URL,
    /// instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

impl Remote {
    /// The endpoint and trust options these flags describe.
    pub fn resolve(&self) -> anyhow::Result<(Endpoint, TrustOptions)> {
        let endpoint =
            Endpoint::new(&self.url, self.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
        let trust = TrustOptions {
            allow_simulated: self.allow_simulated,
            manifests: self.manifests.clone(),
        };
        Ok((endpoint, trust))
    }
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
