//! Options shared by `chrysalis verify`, `chat` and `serve`: where the shim is and how
//! far to trust it.

use std::path::PathBuf;

use chrysalis_client::attest::TrustOptions;
use chrysalis_client::transport::Endpoint;
use chrysalis_measurements::snp::MinTcbSpec;

/// Where the shim is and what evidence to accept.
///
/// By default only SEV-SNP evidence is accepted, its launch measurement must be one of
/// the published manifests built into this binary, and its REPORTED_TCB must meet
/// their minimum for the report's CPU generation.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The provider's shim, e.g. https://provider.example:8443 or http://127.0.0.1:8443.
    #[arg(long, value_name = "URL", env = "CHRYSALIS_URL")]
    pub url: String,
    /// Accept SIMULATED evidence from a dev-mode enclave. INSECURE: it proves nothing
    /// about the code or the machine (it has no launch measurement); every output is
    /// then marked INSECURE.
    #[arg(long)]
    pub allow_simulated: bool,
    /// Published image manifests (a JSON file or a directory of them) that REPLACE the
    /// built-in ones: their launch digests are the only measurements accepted, and
    /// their `min_tcb` is the minimum TCB. Default: the manifests of
    /// measurements/published built into this binary.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// Do not compare the launch measurement. INSECURE: any image on genuine AMD
    /// hardware is accepted, including one that logs prompts; every output is then
    /// marked INSECURE. The minimum TCB and every other check still apply.
    #[arg(long)]
    pub insecure_any_measurement: bool,
    /// Raise the manifests' minimum TCB, e.g. `snp=28` (every generation) or
    /// `genoa:snp=28,microcode=90`; components: fmc, bootloader, tee, snp, microcode.
    /// Repeat for several. It never lowers the manifests' minimum.
    #[arg(long, value_name = "[CPU:]SPEC", value_parser = MinTcbSpec::parse)]
    pub min_tcb: Vec<MinTcbSpec>,
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
            insecure_any_measurement: self.insecure_any_measurement,
            min_tcb: self.min_tcb.clone(),
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
