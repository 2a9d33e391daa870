//! The VCEK for this host's chip and TCB, handed to the enclave as a certificate bundle.
//!
//! QEMU's SNP guests get no certificates in their extended reports (trixie's QEMU 10
//! has no `certs-filename`), so the shim supplies them: from files (`--vcek`,
//! `--vcek-chain`), or from AMD's Key Distribution Service (KDS), which serves the VCEK
//! for a chip id and TCB and the ASK/ARK chain for a generation:
//!
//! ```text
//! {kds}/vcek/v1/{Milan|Genoa|Turin}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..
//! {kds}/vcek/v1/{Milan|Genoa|Turin}/cert_chain
//! ```
//!
//! (Turin: the hwid is the first 8 bytes of CHIP_ID and `fmcSPL` comes first.) Fetched
//! certificates are cached on disk by (product, chip id, TCB), and only after they
//! verified the enclave's own report against AMD's pinned root, so a bad download or a
//! poisoned cache is never handed on. The shim is untrusted anyway: the enclave checks
//! the bundle the same way before it attaches it to evidence, and clients verify
//! everything against their own pinned roots.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use chrysalis_measurements::snp::{authenticate_with_certs, Processor, Report, Tcb, VerifyError};
use chrysalis_protocol::{CertBundle, EvidenceKind, Frame, PlainMessage};

/// AMD's Key Distribution Service.
pub const KDS_URL: &str = "https://kdsintf.amd.com";
/// Largest certificate download accepted (a VCEK is about 1.4 KiB, the chain 4 KiB).
pub const MAX_DOWNLOAD: usize = 64 * 1024;
/// How long one KDS request may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the shim gets the VCEK it hands to the enclave.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VcekArgs {
    /// VCEK (or VLEK) for this host's chip and current TCB, DER or PEM, handed to the
    /// enclave instead of fetching one from AMD's KDS (for hosts without network).
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,
    /// ASK (or ASVK) then ARK, PEM, to go with --vcek (default: clients use their
    /// pinned AMD chain).
    #[arg(long, value_name = "FILE", requires = "vcek")]
    pub vcek_chain: Option<PathBuf>,
    /// AMD Key Distribution Service to fetch the VCEK and chain from.
    #[arg(long, value_name = "URL", default_value = KDS_URL)]
    pub kds_url: String,
    /// Cache of fetched VCEKs, by product, chip id and TCB
    /// [default: $XDG_CACHE_HOME/chrysalis/vcek or ~/.cache/chrysalis/vcek].
    #[arg(long, value_name = "DIR")]
    pub vcek_cache: Option<PathBuf>,
    /// Processor generation (milan, genoa, turin) when reports do not name it
    /// (version 2 reports carry no CPUID).
    #[arg(long, value_name = "GENERATION", value_parser = parse_product)]
    pub product: Option<Processor>,
    /// Never contact the KDS: only --vcek or the cache.
    #[arg(long)]
    pub offline: bool,
}

fn parse_product(text: &str) -> Result<Processor, String> {
    Processor::from_name(text)
        .ok_or_else(|| format!("expected milan, genoa or turin, got {text:?}"))
}

/// Why no VCEK could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VcekError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The KDS could not be reached or did not answer in time.
    #[error("AMD KDS unreachable at {url}: {reason}; expected a certificate. On a host without network, pass --vcek FILE")]
    Unreachable {
        /// The URL asked for.
        url: String,
        /// What the HTTP client said.
        reason: String,
    },
    /// The KDS answered with an error status.
    #[error("AMD KDS answered {status} for {url}; expected 200 with a certificate")]
    Status {
        /// The URL asked for.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was larger than any certificate.
    #[error("AMD KDS answer from {url} is over {MAX_DOWNLOAD} bytes; expected a certificate of a few KiB")]
    TooLarge {
        /// The URL asked for.
        url: String,
    },
    /// The report says nothing about which VCEK to fetch.
    #[error("cannot tell which VCEK to fetch: {0}")]
    Unidentifiable(String),
    /// The certificates do not endorse the report (wrong chip, TCB or generation).
    #[error("the VCEK does not endorse the enclave's report: {0}")]
    Mismatch(#[source] VerifyError),
    /// KDS access is off and no VCEK is cached.
    #[error("no VCEK cached at {path} and --offline forbids asking AMD's KDS; expected --vcek FILE or a cached VCEK")]
    Offline {
        /// Where the cached VCEK would be.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VcekError + '_ {
    move |source| VcekError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which VCEK a report needs: its generation, chip id and REPORTED_TCB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcekId {
    /// The generation (names the KDS product).
    pub processor: Processor,
    /// CHIP_ID as the KDS wants it: 64 bytes, or the first 8 on Turin.
    pub hwid: Vec<u8>,
    /// REPORTED_TCB, decoded for the generation.
    pub tcb: Tcb,
}

impl VcekId {
    /// Reads the VCEK's identity from a report; `product` names the generation when
    /// the report has no CPUID fields (version 2).
    pub fn from_report(report: &Report, product: Option<Processor>) -> Result<Self, VcekError> {
        let processor = report.processor_from_cpuid().or(product).ok_or_else(|| {
            VcekError::Unidentifiable(format!(
                "the version {} report names no processor generation; expected --product milan|genoa|turin",
                report.version()
            ))
        })?;
        if report.chip_id_masked() {
            return Err(VcekError::Unidentifiable(
                "CHIP_ID is masked (all zero), so no VCEK can be looked up; expected a report from a host that does not mask the chip id, or a VLEK via --vcek".into(),
            ));
        }
        let chip_id = report.chip_id();
        let hwid_len = if processor == Processor::Turin { 8 } else { 64 };
        Ok(Self {
            processor,
            hwid: chip_id[..hwid_len].to_vec(),
            tcb: report.reported_tcb(processor),
        })
    }

    /// The KDS URL of this VCEK under `base`.
    pub fn vcek_url(&self, base: &str) -> String {
        let t = &self.tcb;
        let fmc = t.fmc.map(|f| format!("fmcSPL={f}&")).unwrap_or_default();
        format!(
            "{}/vcek/v1/{}/{}?{fmc}blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            base.trim_end_matches('/'),
            self.processor.name(),
            hex::encode(&self.hwid),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        )
    }

    /// Where this VCEK is cached under `dir`: `{product}/{hwid}/{tcb}.der`.
    pub fn cache_path(&self, dir: &Path) -> PathBuf {
        let t = &self.tcb;
        let tcb = format!(
            "fmc{}-bl{}-tee{}-snp{}-ucode{}",
            t.fmc.unwrap_or(0),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        );
        dir.join(self.processor.name())
            .join(hex::encode(&self.hwid))
            .join(format!("{tcb}.der"))
    }
}

/// The KDS URL of a generation's ASK/ARK chain under `base`.
pub fn chain_url(base: &str, processor: Processor) -> String {
    format!(
        "{}/vcek/v1/{}/cert_chain",
        base.trim_end_matches('/'),
        processor.name()
    )
}

/// The default cache directory.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("chrysalis").join("vcek")
}

/// Downloads one certificate, reading at most [`MAX_DOWNLOAD`] bytes.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, VcekError> {
    let unreachable = |e: reqwest::Error| VcekError::Unreachable {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    let mut response = client.get(url).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(VcekError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_DOWNLOAD {
            return Err(VcekError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Writes a file through a temporary name, so a crash leaves no half-written cache.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), VcekError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read(path: &Path) -> Result<Vec<u8>, VcekError> {
    std::fs::read(path).map_err(io_err(path))
}

/// Obtains and caches VCEK bundles: VCEK first, then the PEM ASK/ARK chain.
#[derive(Debug)]
pub struct VcekStore {
    kds_url: String,
    cache_dir: PathBuf,
    offline: bool,
    product: Option<Processor>,
    client: reqwest::Client,
}

impl VcekStore {
    /// A store as the flags describe it.
    pub fn new(args: &VcekArgs) -> Result<Self, VcekError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| VcekError::Unreachable {
                url: args.kds_url.clone(),
                reason: format!("HTTP client: {e}"),
            })?;
        Ok(Self {
            kds_url: args.kds_url.clone(),
            cache_dir: args.vcek_cache.clone().unwrap_or_else(default_cache_dir),
            offline: args.offline,
            product: args.product,
            client,
        })
    }

    /// The bundle that endorses `report` (raw bytes): from the cache, else from the
    /// KDS. Either way it must verify the report before it is returned or cached.
    pub async fn bundle_for(&self, report: &[u8]) -> Result<Vec<Vec<u8>>, VcekError> {
        let parsed = Report::parse(report).map_err(VcekError::Mismatch)?;
        let id = VcekId::from_report(&parsed, self.product)?;
        let vcek_path = id.cache_path(&self.cache_dir);
        let chain_path = self
            .cache_dir
            .join(id.processor.name())
            .join("cert_chain.pem");
        if let (Ok(vcek), Ok(chain)) = (read(&vcek_path), read(&chain_path)) {
            let bundle = vec![vcek, chain];
            if authenticate_with_certs(report, &bundle, SystemTime::now()).is_ok() {
                return Ok(bundle);
            }
            tracing::warn!(path = %vcek_path.display(), "cached VCEK does not verify the report; fetching again");
        }
        if self.offline {
            return Err(VcekError::Offline { path: vcek_path });
        }
        let vcek = fetch(&self.client, &id.vcek_url(&self.kds_url)).await?;
        let chain = fetch(&self.client, &chain_url(&self.kds_url, id.processor)).await?;
        let bundle = vec![vcek, chain];
        authenticate_with_certs(report, &bundle, SystemTime::now()).map_err(VcekError::Mismatch)?;
        write_atomically(&vcek_path, &bundle[0])?;
        write_atomically(&chain_path, &bundle[1])?;
        Ok(bundle)
    }
}

/// The shim's certificate bundle for the enclave, ready as a plain frame.
#[derive(Debug)]
pub struct CertSource {
    store: VcekStore,
    frame: RwLock<Option<Vec<u8>>>,
    /// From files: never replaced by a fetch.
    fixed: bool,
    fetching: AtomicBool,
}

fn bundle_frame(certs: Vec<Vec<u8>>) -> Result<Vec<u8>, VcekError> {
    PlainMessage::CertBundle(CertBundle { certs })
        .to_frame_bytes()
        .map_err(|e| VcekError::Unidentifiable(format!("certificate bundle too large: {e}")))
}

impl CertSource {
    /// Reads `--vcek`/`--vcek-chain` now when given; otherwise bundles are fetched
    /// when the enclave's first SNP evidence shows which chip and TCB they are for.
    pub fn new(args: &VcekArgs) -> Result<Self, VcekError> {
        let mut frame = None;
        if let Some(vcek) = &args.vcek {
            let mut certs = vec![read(vcek)?];
            if let Some(chain) = &args.vcek_chain {
                certs.push(read(chain)?);
            }
            frame = Some(bundle_frame(certs)?);
        }
        Ok(Self {
            store: VcekStore::new(args)?,
            fixed: frame.is_some(),
            frame: RwLock::new(frame),
            fetching: AtomicBool::new(false),
        })
    }

    /// The `CertBundle` frame to send the enclave before an evidence request, if any.
    pub fn frame(&self) -> Option<Vec<u8>> {
        self.frame.read().ok().and_then(|f| f.clone())
    }

    /// The SNP report in an enclave's evidence answer that came without certificates,
    /// when this source still has to fetch a bundle for it.
    pub fn report_needing_certs(&self, answer: &[u8]) -> Option<Vec<u8>> {
        if self.fixed || self.frame().is_some() {
            return None;
        }
        let frame = Frame::decode(answer).ok()?;
        match PlainMessage::from_frame(&frame).ok()? {
            PlainMessage::EvidenceResponse(e)
                if e.kind == EvidenceKind::SevSnp && e.cert_chain.is_empty() =>
            {
                Some(e.report)
            }
            _ => None,
        }
    }

    /// Fetches (or loads from the cache) the bundle for `report` and keeps it for the
    /// next evidence requests. One fetch at a time; failures are logged and retried
    /// on a later answer.
    pub async fn learn(&self, report: &[u8]) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.store.bundle_for(report).await.and_then(bundle_frame) {
            Ok(frame) => {
                tracing::info!(
                    "VCEK bundle ready; handing it to the enclave with evidence requests"
                );
                if let Ok(mut slot) = self.frame.write() {
                    *slot = Some(frame);
                }
            }
            Err(e) => tracing::warn!(error = %e, "no VCEK for the enclave's reports yet"),
        }
        self.fetching.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use chrysalis_measurements::snp::certs::{decode_svn, Cert, OID_HW_ID, TCB_OIDS};
    use chrysalis_measurements::snp::fixtures::{milan_report, read as fixture};
    use chrysalis_measurements::snp::report::TcbComponent;
    use chrysalis_measurements::snp::CertRole;

    use super::*;

    /// The URL AMD's KDS would serve this very VCEK under, read from the VCEK's own
    /// hwID and TCB extensions (independent of the report parser).
    fn url_from_certificate(vcek: &[u8]) -> String {
        let cert = Cert::parse(vcek, CertRole::Vcek).unwrap();
        let hwid = cert.extension(OID_HW_ID).unwrap();
        let svn = |c: TcbComponent| {
            let oid = TCB_OIDS.iter().find(|(k, _)| *k == c).unwrap().1;
            decode_svn(cert.extension(oid).unwrap()).unwrap()
        };
        format!(
            "{KDS_URL}/vcek/v1/Milan/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            hex::encode(hwid),
            svn(TcbComponent::Bootloader),
            svn(TcbComponent::Tee),
            svn(TcbComponent::Snp),
            svn(TcbComponent::Microcode)
        )
    }

    #[test]
    fn the_url_names_the_chip_and_tcb_the_vcek_was_issued_for() {
        let report = Report::parse(&milan_report()).unwrap();
        let id = VcekId::from_report(&report, Some(Processor::Milan)).unwrap();
        assert_eq!(
            id.vcek_url(KDS_URL),
            url_from_certificate(&fixture("vcek_milan.der"))
        );
        assert_eq!(
            chain_url("https://kds.example/", Processor::Genoa),
            "https://kds.example/vcek/v1/Genoa/cert_chain"
        );
    }

    #[test]
    fn turin_urls_take_eight_bytes_of_chip_id_and_the_fmc() {
        let mut id = VcekId {
            processor: Processor::Turin,
            hwid: vec![0xab; 8],
            tcb: Tcb {
                fmc: Some(1),
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 5,
            },
        };
        assert_eq!(
            id.vcek_url(KDS_URL),
            "https://kdsintf.amd.com/vcek/v1/Turin/abababababababab?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=5"
        );
        let a = id.cache_path(Path::new("/c"));
        id.tcb.snp = 5;
        assert_ne!(
            a,
            id.cache_path(Path::new("/c")),
            "the TCB is part of the cache key"
        );
    }

    #[test]
    fn unidentifiable_reports_say_what_is_missing() {
        let report = Report::parse(&milan_report()).unwrap();
        let err = VcekId::from_report(&report, None).unwrap_err();
        assert!(err.to_string().contains("--product"), "{err}");
        let vlek = Report::parse(&fixture("trustee_milan_vlek_report.bin")).unwrap();
        let err = VcekId::from_report(&vlek, Some(Processor::Milan)).unwrap_err();
        assert!(err.to_string().contains("masked"), "{err}");
    }

    /// A local stand-in for AMD's KDS serving the real fixture VCEK and chain, and
    /// counting requests (no network here).
    async fn local_kds(
        vcek_path: String,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::extract::{Path as UrlPath, RawQuery};
        use axum::routing::get;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (vcek, chain) = (fixture("vcek_milan.der"), fixture("cert_chain_milan"));
        let counter = hits.clone();
        let app = axum::Router::new()
            .route(
                "/vcek/v1/Milan/cert_chain",
                get(move || async move { chain }),
            )
            .route(
                "/vcek/v1/Milan/{hwid}",
                get(
                    move |UrlPath(hwid): UrlPath<String>, RawQuery(q): RawQuery| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let wanted = format!("{hwid}?{}", q.unwrap_or_default());
                        async move {
                            if wanted == vcek_path {
                                Ok(vcek)
                            } else {
                                Err(axum::http::StatusCode::NOT_FOUND)
                            }
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    fn args(kds_url: String, cache: &Path) -> VcekArgs {
        VcekArgs {
            kds_url,
            vcek_cache: Some(cache.to_path_buf()),
            product: Some(Processor::Milan),
            ..VcekArgs::default()
        }
    }

    #[tokio::test]
    async fn a_vcek_is_fetched_checked_cached_and_then_served_from_the_cache() {
        let expected = url_from_certificate(&fixture("vcek_milan.der"));
        let path = expected.rsplit('/').next().unwrap().to_owned();
        let (kds, hits) = local_kds(path).await;
        let cache = tempfile::tempdir().unwrap();
        let store = VcekStore::new(&args(kds, cache.path())).unwrap();
        let bundle = store.bundle_for(&milan_report()).await.unwrap();
        assert_eq!(
            bundle,
            vec![fixture("vcek_milan.der"), fixture("cert_chain_milan")]
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Second time: from the cache, no request.
        let again = store.bundle_for(&milan_report()).await.unwrap();
        assert_eq!(again, bundle);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Offline with a warm cache still works.
        let mut offline = args("http://127.0.0.1:9".into(), cache.path());
        offline.offline = true;
        let bundle = VcekStore::new(&offline)
            .unwrap()
            .bundle_for(&milan_report())
            .await;
        assert!(bundle.is_ok());
    }

    #[tokio::test]
    async fn a_vcek_for_another_chip_is_not_cached() {
        // The KDS answers the trustee report's URL with the Milan VCEK: wrong chip.
        let trustee = fixture("trustee_milan_report.bin");
        let id =
            VcekId::from_report(&Report::parse(&trustee).unwrap(), Some(Processor::Milan)).unwrap();
        let path = id.vcek_url("").rsplit('/').next().unwrap().to_owned();
        let (kds, _) = local_kds(path).await;
        let cache = tempfile::tempdir().unwrap();
        let store = VcekStore::new(&args(kds, cache.path())).unwrap();
        let err = store.bundle_for(&trustee).await.unwrap_err();
        assert!(matches!(err, VcekError::Mismatch(_)), "{err}");
        assert!(!id.cache_path(cache.path()).exists());
    }

    #[tokio::test]
    async fn an_unreachable_kds_is_named_with_the_way_out() {
        // Port 9 (discard) on loopback: nothing listens there.
        let cache = tempfile::tempdir().unwrap();
        let store = VcekStore::new(&args("http://127.0.0.1:9".into(), cache.path())).unwrap();
        let err = store.bundle_for(&milan_report()).await.unwrap_err();
        assert!(matches!(err, VcekError::Unreachable { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("127.0.0.1:9") && text.contains("--vcek FILE"),
            "{text}"
        );
        let mut offline = args("http://127.0.0.1:9".into(), cache.path());
        offline.offline = true;
        let err = VcekStore::new(&offline)
            .unwrap()
            .bundle_for(&milan_report())
            .await;
        assert!(matches!(err, Err(VcekError::Offline { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn evidence_without_certificates_triggers_one_fetch() {
        use chrysalis_protocol::Evidence;
        let expected = url_from_certificate(&fixture("vcek_milan.der"));
        let (kds, hits) = local_kds(expected.rsplit('/').next().unwrap().to_owned()).await;
        let cache = tempfile::tempdir().unwrap();
        let source = CertSource::new(&args(kds, cache.path())).unwrap();
        assert!(source.frame().is_none());
        let evidence = Evidence {
            kind: EvidenceKind::SevSnp,
            report: milan_report(),
            cert_chain: Vec::new(),
            x25519_pub: [0; 32],
            ed25519_pub: [0; 32],
            model_root: [0; 32],
            manifest_id: "sev-snp".into(),
        };
        let answer = PlainMessage::EvidenceResponse(evidence)
            .to_frame_bytes()
            .unwrap();
        let report = source.report_needing_certs(&answer).unwrap();
        source.learn(&report).await;
        let frame = Frame::decode(&source.frame().unwrap()).unwrap();
        let PlainMessage::CertBundle(bundle) = PlainMessage::from_frame(&frame).unwrap() else {
            panic!("expected a certificate bundle");
        };
        assert_eq!(bundle.certs[0], fixture("vcek_milan.der"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(
            source.report_needing_certs(&answer).is_none(),
            "nothing left to fetch"
        );
    }

    #[test]
    fn files_given_on_the_command_line_are_bundled_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let vcek = dir.path().join("vcek.der");
        std::fs::write(&vcek, fixture("vcek_milan.der")).unwrap();
        let source = CertSource::new(&VcekArgs {
            vcek: Some(vcek),
            ..VcekArgs::default()
        })
        .unwrap();
        assert!(source.frame().is_some());
        let err = CertSource::new(&VcekArgs {
            vcek: Some(dir.path().join("missing.der")),
            ..VcekArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.der"), "{err}");
    }
}
