//! Per-source limits on evidence requests.
//!
//! The enclave caps evidence globally (4096 pending, 50 per second, bursts of 200;
//! `docs/protocol.md` §12) because every connection reaches it through the shim and it
//! cannot tell clients apart. Only the shim sees client addresses, so only the shim can
//! stop one client from spending that global budget for everyone else. Each source gets
//! a token bucket here; a request over it is answered by the shim and never reaches the
//! enclave.
//!
//! A source is a client's IPv4 address, or the /64 prefix of an IPv6 address (one
//! host commonly owns a whole /64, so keying on the full address would hand it 2^64
//! buckets). Memory is bounded: at most `max_sources` buckets are kept, and only a
//! bucket that has refilled to its burst is forgotten, since forgetting it changes
//! nothing. When every tracked bucket is still refilling, a new source is refused until
//! one is idle: a source is never forgotten while it owes tokens, so no one can earn a
//! fresh burst by pushing itself out of the table.
//!
//! Time is passed in explicitly (`now`), so the limiter is tested with chosen
//! instants rather than sleeps.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use chrysalis_protocol::{Frame, FrameKind, PlainMessage, WireMessage};

/// Slowest refill accepted: one request per 1000 s. Bounds every wait computed below,
/// so a `Duration` built from it cannot overflow.
const MIN_RATE: f64 = 0.001;
/// Fastest refill accepted; above it the limit means nothing.
const MAX_RATE: f64 = 1_000_000.0;

/// Options of `chrysalis-shim serve` that limit evidence requests per client source.
#[derive(clap::Args, Clone, Debug)]
pub struct EvidenceLimitArgs {
    /// Evidence requests each client source may make per second, sustained. A source is
    /// an IPv4 address or an IPv6 /64. Each request costs the enclave a report from the
    /// secure processor and holds one of its 4096 pending-evidence slots for 120 s; the
    /// enclave issues at most 50 per second for everyone together, so this stops one
    /// client from spending that budget for all. A client needs one per session. Behind
    /// a reverse proxy every client shares the proxy's address: raise this there, or
    /// let clients reach the shim directly.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 5.0, value_parser = parse_rate)]
    pub evidence_rate_per_source: f64,
    /// Evidence requests a source may make at once before --evidence-rate-per-source
    /// applies (its bucket's size). Over it, POST /v1/evidence answers 429 with
    /// Retry-After, and a session that asks for evidence is closed with code 1013.
    #[arg(long, value_name = "REQUESTS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub evidence_burst_per_source: u32,
    /// Most client sources tracked at once (about 64 bytes each). A source is forgotten
    /// once its bucket is full again; when this many are all still refilling, requests
    /// from sources not yet tracked are refused (429) until one refills, so memory
    /// stays bounded whatever arrives.
    #[arg(long, value_name = "SOURCES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub evidence_sources_max: u32,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of requests per second"))?;
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "{text} requests per second: expected between {MIN_RATE} and {MAX_RATE}"
        ))
    }
}

/// Whether `frame` is one whole plain frame holding an evidence request: what the
/// enclave answers with fresh evidence on any connection, a session's included. It
/// decodes the body as the enclave does, so an odd but valid encoding of the same
/// message is caught too.
pub fn is_evidence_request(frame: &[u8]) -> bool {
    match Frame::parse_exact(frame) {
        Ok((header, body)) if header.kind == FrameKind::Plain => matches!(
            PlainMessage::from_wire(body),
            Ok(PlainMessage::EvidenceRequest(_))
        ),
        _ => false,
    }
}

/// The limits one [`EvidenceLimiter`] applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Tokens added per second.
    pub rate: f64,
    /// Tokens a bucket holds when full.
    pub burst: u32,
    /// Most buckets kept.
    pub max_sources: usize,
}

impl Limits {
    /// The limits `args` ask for; `None` if they are out of range (clap checks them).
    pub fn from_args(args: &EvidenceLimitArgs) -> Option<Self> {
        let limits = Self {
            rate: args.evidence_rate_per_source,
            burst: args.evidence_burst_per_source,
            max_sources: usize::try_from(args.evidence_sources_max).ok()?,
        };
        limits.valid().then_some(limits)
    }

    fn valid(&self) -> bool {
        (MIN_RATE..=MAX_RATE).contains(&self.rate) && self.burst >= 1 && self.max_sources >= 1
    }
}

/// Who a request is charged to: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a client at `ip`. An IPv4-mapped IPv6 address (a dual-stack
    /// listener) counts as the IPv4 address it maps.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a request was refused, and how long until asking again can work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    /// The source spent its bucket. `first` is true for the first refusal since the
    /// source was last admitted, so a flood is logged once rather than per request.
    Rate {
        /// Until one token is back.
        retry_after: Duration,
        /// First refusal of this run.
        first: bool,
    },
    /// The table is full of sources that are all still refilling. `first` is true for
    /// the first such refusal since a new source was last admitted.
    Full {
        /// Until the first tracked bucket is full again.
        retry_after: Duration,
        /// First refusal of this run.
        first: bool,
    },
}

impl Refusal {
    /// How long the client should wait.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Rate { retry_after, .. } | Self::Full { retry_after, .. } => *retry_after,
        }
    }

    /// Whether this is the first refusal of a run (worth a log line; the rest of a
    /// flood is only counted).
    pub fn is_first(&self) -> bool {
        match self {
            Self::Rate { first, .. } | Self::Full { first, .. } => *first,
        }
    }

    /// [`Self::retry_after`] in whole seconds, rounded up and at least 1 (the unit of
    /// HTTP's `Retry-After`; 0 would invite an immediate retry that fails again).
    pub fn retry_after_secs(&self) -> u64 {
        let wait = self.retry_after();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        secs.max(1)
    }

    /// A sentence for the client naming the limit and when to retry (under 123 bytes
    /// for the usual limits, so it also fits a WebSocket close reason).
    pub fn explain(&self, limits: &Limits) -> String {
        let secs = self.retry_after_secs();
        match self {
            Self::Rate { .. } => format!(
                "evidence limit: {} per second per client address, bursts of {}; retry in {secs} s",
                limits.rate, limits.burst
            ),
            Self::Full { .. } => format!(
                "evidence limit: {} client addresses are busy; retry in {secs} s",
                limits.max_sources
            ),
        }
    }
}

/// One source's token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens at `at` (fractional: refilling is continuous).
    tokens: f64,
    at: Instant,
    /// Whether the last request was refused.
    refused: bool,
}

impl Bucket {
    fn full(limits: &Limits, now: Instant) -> Self {
        Self {
            tokens: f64::from(limits.burst),
            at: now,
            refused: false,
        }
    }

    /// Refills up to `now`. Handlers read the clock before taking the lock, so `now`
    /// may be a little older than `at`; that counts as no time passing.
    fn refill(&mut self, limits: &Limits, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limits.rate).min(f64::from(limits.burst));
        self.at = self.at.max(now);
    }

    fn take(&mut self, limits: &Limits, now: Instant) -> Result<(), Refusal> {
        self.refill(limits, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = false;
            return Ok(());
        }
        let first = !self.refused;
        self.refused = true;
        Err(Refusal::Rate {
            retry_after: Duration::from_secs_f64((1.0 - self.tokens) / limits.rate),
            first,
        })
    }

    /// When this bucket is full again, and so can be forgotten without effect.
    fn idle_at(&self, limits: &Limits) -> Instant {
        let missing = f64::from(limits.burst) - self.tokens;
        self.at + Duration::from_secs_f64(missing.max(0.0) / limits.rate)
    }
}

/// Token buckets per [`Source`], at most [`Limits::max_sources`] of them.
#[derive(Debug)]
pub struct EvidenceLimiter {
    limits: Limits,
    buckets: HashMap<Source, Bucket>,
    /// No tracked bucket is idle before this instant (a lower bound), so a sweep before
    /// it would free nothing: a full table under a flood of new sources costs one scan
    /// per refill, not one per request.
    next_idle: Option<Instant>,
    /// Whether the last new source was refused because the table was full.
    refusing_new: bool,
}

impl EvidenceLimiter {
    /// An empty limiter.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: HashMap::new(),
            next_idle: None,
            refusing_new: false,
        }
    }

    /// The limits applied.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many sources are tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Charges one evidence request from `source` at `now`, or says why not.
    pub fn admit(&mut self, source: Source, now: Instant) -> Result<(), Refusal> {
        if let Some(bucket) = self.buckets.get_mut(&source) {
            return bucket.take(&self.limits, now);
        }
        if self.buckets.len() >= self.limits.max_sources {
            self.sweep(now);
        }
        if self.buckets.len() >= self.limits.max_sources {
            let idle = self.next_idle.unwrap_or(now);
            let first = !self.refusing_new;
            self.refusing_new = true;
            return Err(Refusal::Full {
                retry_after: idle.saturating_duration_since(now),
                first,
            });
        }
        self.refusing_new = false;
        let mut bucket = Bucket::full(&self.limits, now);
        let taken = bucket.take(&self.limits, now);
        let idle = bucket.idle_at(&self.limits);
        self.next_idle = Some(self.next_idle.map_or(idle, |t| t.min(idle)));
        self.buckets.insert(source, bucket);
        taken
    }

    /// Forgets every bucket that is full again at `now`, unless none can be yet.
    fn sweep(&mut self, now: Instant) {
        if self.next_idle.is_some_and(|t| now < t) {
            return;
        }
        let limits = self.limits;
        self.buckets.retain(|_, b| b.idle_at(&limits) > now);
        self.next_idle = self.buckets.values().map(|b| b.idle_at(&limits)).min();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A power of two: every wait below is exact in binary floating point.
    const LIMITS: Limits = Limits {
        rate: 4.0,
        burst: 20,
        max_sources: 3,
    };

    fn v4(last: u8) -> Source {
        Source::of(IpAddr::from([192, 0, 2, last]))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Spends `n` requests of `source` at `now`, all of which must be admitted.
    fn spend(limiter: &mut EvidenceLimiter, source: Source, n: u32, now: Instant) {
        for i in 0..n {
            assert_eq!(limiter.admit(source, now), Ok(()), "request {i} of {n}");
        }
    }

    #[test]
    fn a_burst_is_admitted_and_the_next_request_waits_for_one_token() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        spend(&mut limiter, v4(1), LIMITS.burst, t0);
        let refusal = limiter.admit(v4(1), t0).unwrap_err();
        // 4 per second: one token takes 250 ms.
        assert_eq!(
            refusal,
            Refusal::Rate {
                retry_after: ms(250),
                first: true
            }
        );
        assert_eq!(refusal.retry_after_secs(), 1);
        let again = limiter.admit(v4(1), t0 + ms(125)).unwrap_err();
        assert_eq!(
            again,
            Refusal::Rate {
                retry_after: ms(125),
                first: false
            }
        );
    }

    #[test]
    fn tokens_refill_at_the_rate_and_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        spend(&mut limiter, v4(1), LIMITS.burst, t0);
        // 1 s at 4 per second: exactly four more, then refused.
        spend(&mut limiter, v4(1), 4, t0 + ms(1000));
        assert!(limiter.admit(v4(1), t0 + ms(1000)).is_err());
        // An hour idle refills to the burst, not to 14 400.
        let later = t0 + Duration::from_secs(3600);
        spend(&mut limiter, v4(1), LIMITS.burst, later);
        assert!(limiter.admit(v4(1), later).is_err());
    }

    #[test]
    fn admission_after_refusal_resets_the_first_refusal_flag() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        spend(&mut limiter, v4(1), LIMITS.burst, t0);
        assert!(matches!(
            limiter.admit(v4(1), t0),
            Err(Refusal::Rate { first: true, .. })
        ));
        spend(&mut limiter, v4(1), 1, t0 + ms(250));
        assert!(matches!(
            limiter.admit(v4(1), t0 + ms(250)),
            Err(Refusal::Rate { first: true, .. })
        ));
    }

    #[test]
    fn an_older_clock_reading_counts_as_no_time_passing() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        spend(&mut limiter, v4(1), LIMITS.burst, t0 + ms(1000));
        // A handler that read the clock before another took the lock.
        assert!(limiter.admit(v4(1), t0).is_err());
        spend(&mut limiter, v4(1), 1, t0 + ms(1250));
    }

    #[test]
    fn one_source_spending_its_bucket_leaves_others_untouched() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        spend(&mut limiter, v4(1), LIMITS.burst, t0);
        assert!(limiter.admit(v4(1), t0).is_err());
        spend(&mut limiter, v4(2), LIMITS.burst, t0);
        assert!(limiter.admit(v4(2), t0).is_err());
    }

    #[test]
    fn ipv6_hosts_in_one_slash_64_share_a_bucket_and_other_prefixes_do_not() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(other));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        spend(&mut limiter, Source::of(a), LIMITS.burst, t0);
        assert!(limiter.admit(Source::of(b), t0).is_err());
        spend(&mut limiter, Source::of(other), 1, t0);
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_source() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Source::of(mapped), v4(1));
        assert_eq!(Source::of(mapped).to_string(), "192.0.2.1");
    }

    #[test]
    fn a_full_table_refuses_new_sources_until_a_bucket_refills() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        for last in 1..=3 {
            spend(&mut limiter, v4(last), 1, t0 + ms(u64::from(last)));
        }
        // Each bucket owes one token (250 ms); the first is full again at t0 + 251 ms.
        let refusal = limiter.admit(v4(9), t0 + ms(100)).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Full {
                retry_after: ms(151),
                first: true
            }
        );
        assert!(!limiter.admit(v4(8), t0 + ms(100)).unwrap_err().is_first());
        assert_eq!(limiter.tracked(), 3);
        // Tracked sources are still served while the table is full.
        spend(&mut limiter, v4(2), 1, t0 + ms(100));
        spend(&mut limiter, v4(9), 1, t0 + ms(251));
        assert_eq!(limiter.tracked(), 3);
    }

    #[test]
    fn a_flood_of_new_sources_never_grows_the_table_past_its_bound() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(LIMITS);
        let mut admitted = 0;
        for i in 0..10_000u32 {
            let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            // 1 ms apart, and a bucket owing one token is full again only 250 ms
            // later, so most new sources find the table full.
            if limiter.admit(Source::of(ip), t0 + ms(u64::from(i))).is_ok() {
                admitted += 1;
            }
            assert!(limiter.tracked() <= LIMITS.max_sources);
        }
        // Each of the 3 slots frees every ~251 ms: about 120 admitted over 10 s.
        assert!((100..=200).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn a_source_owing_tokens_is_never_forgotten() {
        let t0 = Instant::now();
        let mut limiter = EvidenceLimiter::new(Limits {
            max_sources: 1,
            ..LIMITS
        });
        spend(&mut limiter, v4(1), LIMITS.burst, t0);
        // 20 tokens at 4 per second: full again only after 5 s.
        assert!(limiter.admit(v4(2), t0 + ms(4999)).is_err());
        assert!(limiter.admit(v4(1), t0 + ms(100)).is_err());
        spend(&mut limiter, v4(2), 1, t0 + ms(5200));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn the_explanation_names_the_limit_and_the_wait() {
        let refusal = Refusal::Rate {
            retry_after: Duration::from_millis(2001),
            first: true,
        };
        let text = refusal.explain(&LIMITS);
        assert_eq!(
            text,
            "evidence limit: 4 per second per client address, bursts of 20; retry in 3 s"
        );
        assert!(text.len() <= 123);
        let full = Refusal::Full {
            retry_after: Duration::ZERO,
            first: true,
        };
        assert_eq!(
            full.explain(&LIMITS),
            "evidence limit: 3 client addresses are busy; retry in 1 s"
        );
    }

    #[test]
    fn only_a_plain_evidence_request_frame_counts_as_one() {
        let request = PlainMessage::EvidenceRequest(chrysalis_protocol::EvidenceRequest {
            nonce: [0xab; 32],
        });
        let frame = request.to_frame_bytes().unwrap();
        assert!(is_evidence_request(&frame));
        // The same body in a sealed frame is ciphertext to the enclave, not a request.
        let sealed = Frame::new(FrameKind::Sealed, 0, request.to_wire()).unwrap();
        assert!(!is_evidence_request(&sealed.to_bytes()));
        // Truncated, or another plain message.
        assert!(!is_evidence_request(&frame[..frame.len() - 1]));
        let error = PlainMessage::Error(chrysalis_protocol::ErrorMessage {
            code: chrysalis_protocol::ErrorCode::BadRequest,
            message: String::new(),
        });
        assert!(!is_evidence_request(&error.to_frame_bytes().unwrap()));
    }

    #[test]
    fn rates_outside_the_bounds_are_refused() {
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "1e9", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
