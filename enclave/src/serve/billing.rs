//! Metering and billing: prices from the measured configuration, one meter per
//! payment channel, cumulative signed charges and hash-chained bills.
//!
//! A session is bound to a channel by the client's [`ChannelBind`] (signed by its
//! wallet key for this session, so nobody else can bill to it); the shim then reports
//! the channel's deposit in a [`ChannelStatus`]. Before a request runs, its worst case
//! (the prompt limit times the prompt price plus its `max_tokens` times the completion
//! price) is reserved against the deposit, so the cumulative charge never exceeds what
//! the shim reported. A report that is wrong can only hurt the provider: too high and
//! the contract refuses the charges, too low and requests are refused.
//!
//! After a request, [`Reservation::finish`] meters the real usage, signs the next
//! cumulative [`Charge`] (for the contract) and a [`Bill`] that names the receipt and
//! the previous bill's hash (for the client). Meters live in memory: after a restart
//! the count resumes from the newest charge the shim shows that this enclave signed.

use std::collections::HashMap;
use std::sync::Mutex;

use chrysalis_protocol::billing::{
    bill_hash, receipt_hash, Bill, ChannelBind, ChannelStatus, Prices,
};
use chrysalis_protocol::ton::{ChannelConfig, Charge, SignedCharge, TonAddress, TonError};
use chrysalis_protocol::{ChargeBoc, Receipt, Signed, Usage};
use ed25519_dalek::SigningKey;

/// Prices of `chrysalis-enclave serve`; in a VM they come from the measured kernel
/// command line, so clients know them from the launch measurement.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct PriceArgs {
    /// Nanotons per prompt token (after the chat template). 0 with a zero completion
    /// price serves for free, without a payment channel.
    #[arg(long, value_name = "NANOTON", default_value_t = 0)]
    pub price_prompt: u64,
    /// Nanotons per generated token.
    #[arg(long, value_name = "NANOTON", default_value_t = 0)]
    pub price_completion: u64,
}

impl PriceArgs {
    /// The prices as the protocol carries them.
    pub fn prices(&self) -> Prices {
        Prices {
            prompt: self.price_prompt,
            completion: self.price_completion,
        }
    }
}

/// A session's channel, as its binding established it.
#[derive(Clone, Debug)]
pub struct BoundChannel {
    address: TonAddress,
}

impl BoundChannel {
    fn key(&self) -> [u8; 32] {
        self.address.hash_part.clone().into()
    }
}

/// What the enclave knows about one channel.
struct Meter {
    config: ChannelConfig,
    address: TonAddress,
    seqno: u64,
    cumulative: u128,
    prompt_tokens: u64,
    completion_tokens: u64,
    last_bill: [u8; 32],
    /// As last reported by the shim; `None` until a report arrives.
    deposited: Option<u128>,
    /// Worst cases of requests running now.
    reserved: u128,
}

/// Every channel's meter, and the prices.
pub struct Billing {
    prices: Prices,
    max_prompt_tokens: u64,
    max_new_tokens: u32,
    meters: Mutex<HashMap<[u8; 32], Meter>>,
}

/// Why billing refused or failed; the text goes to the client.
#[derive(Debug, thiserror::Error)]
pub enum BillingRefusal {
    /// The request is not covered: no channel, no deposit report, or too little.
    #[error("{0}")]
    PaymentRequired(String),
    /// Signing failed (a cell could not be built).
    #[error("billing failed: {0}")]
    Internal(#[from] TonError),
    /// The channel's meter is gone (cannot happen: meters are never removed).
    #[error("the bound channel has no meter")]
    NoMeter,
}

impl Billing {
    /// Billing at `prices`, with the limits that bound a request's worst case.
    pub fn new(prices: Prices, max_prompt_tokens: usize, max_new_tokens: u32) -> Self {
        Self {
            prices,
            max_prompt_tokens: max_prompt_tokens as u64,
            max_new_tokens,
            meters: Mutex::new(HashMap::new()),
        }
    }

    fn meters(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Meter>> {
        // A panic while holding the lock leaves counters that are still consistent
        // (each update is a few assignments), so keep going with them.
        self.meters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a client's binding and creates the channel's meter if it is new.
    pub fn bind(
        &self,
        bind: &ChannelBind,
        evidence_hash: &[u8; 32],
        client_ephemeral_pub: &[u8; 32],
        enclave_key: &[u8; 32],
    ) -> Result<BoundChannel, String> {
        let (config, address) = bind
            .verify(evidence_hash, client_ephemeral_pub, enclave_key)
            .map_err(|e| format!("channel binding refused: {e}"))?;
        let bound = BoundChannel {
            address: address.clone(),
        };
        self.meters().entry(bound.key()).or_insert_with(|| Meter {
            config,
            address,
            seqno: 0,
            cumulative: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            last_bill: [0; 32],
            deposited: None,
            reserved: 0,
        });
        Ok(bound)
    }

    /// Takes the shim's report for the bound channel: the deposit, and the newest
    /// charge it holds if this enclave signed it and it is ahead of the meter.
    pub fn status(&self, bound: &BoundChannel, status: &ChannelStatus) -> Result<(), String> {
        if status.channel != bound.key() {
            return Err(format!(
                "channel status names {}, but the session is bound to {}",
                hex::encode(status.channel),
                bound.address
            ));
        }
        let mut meters = self.meters();
        let Some(meter) = meters.get_mut(&bound.key()) else {
            return Err("channel status before a channel bind".into());
        };
        meter.deposited = Some(status.deposited);
        if let Some(latest) = &status.latest_charge {
            let signed = SignedCharge::from_boc(&latest.boc)
                .map_err(|e| format!("reported latest charge: {e}"))?;
            // A charge this enclave did not sign, or for another channel, is ignored:
            // it could only make the enclave bill the client for nothing.
            if signed.verify_for(&meter.address, &meter.config).is_ok()
                && signed.charge.seqno > meter.seqno
                && signed.charge.cumulative >= meter.cumulative
            {
                let c = signed.charge;
                meter.seqno = c.seqno;
                meter.cumulative = c.cumulative;
                meter.prompt_tokens = c.prompt_tokens;
                meter.completion_tokens = c.completion_tokens;
            }
        }
        Ok(())
    }

    /// Reserves a request's worst case against the deposit. `Ok(None)` when serving
    /// is free.
    pub fn reserve(
        &self,
        bound: Option<&BoundChannel>,
        max_tokens: u32,
    ) -> Result<Option<Reservation<'_>>, BillingRefusal> {
        if self.prices.is_free() {
            return Ok(None);
        }
        let refuse = |why: String| Err(BillingRefusal::PaymentRequired(why));
        let Some(bound) = bound else {
            return refuse(format!(
                "this enclave charges {} nanotons per prompt token and {} per completion \
                 token: bind a payment channel to the session first",
                self.prices.prompt, self.prices.completion
            ));
        };
        let worst = self.prices.cost(&Usage {
            prompt_tokens: self.max_prompt_tokens.min(u64::from(u32::MAX)) as u32,
            completion_tokens: max_tokens.min(self.max_new_tokens),
        });
        let mut meters = self.meters();
        let Some(meter) = meters.get_mut(&bound.key()) else {
            return Err(BillingRefusal::NoMeter);
        };
        let Some(deposited) = meter.deposited else {
            return refuse(format!(
                "the shim has not reported the deposit of channel {}; is its billing \
                 configured (--ledger, --ton-api)?",
                meter.address
            ));
        };
        let committed = meter.cumulative + meter.reserved;
        let free = deposited.saturating_sub(committed);
        if worst > free {
            return refuse(format!(
                "channel {} has {free} nanotons left (deposit {deposited}, charged \
                 {}, reserved {}), but this request may cost up to {worst} ({} prompt \
                 tokens at {}, {} completion tokens at {}): top up the channel or \
                 lower max_tokens",
                meter.address,
                meter.cumulative,
                meter.reserved,
                self.max_prompt_tokens,
                self.prices.prompt,
                max_tokens.min(self.max_new_tokens),
                self.prices.completion
            ));
        }
        meter.reserved += worst;
        Ok(Some(Reservation {
            billing: self,
            channel: bound.key(),
            worst,
            open: true,
        }))
    }
}

/// A request's reserved worst case; released when dropped unfinished.
pub struct Reservation<'a> {
    billing: &'a Billing,
    channel: [u8; 32],
    worst: u128,
    open: bool,
}

/// What a finished request produced: the charge for the shim, the bill for the client.
pub struct Billed {
    /// The cumulative signed charge, as its BOC.
    pub charge: ChargeBoc,
    /// The bill naming the receipt and the previous bill.
    pub bill: Signed<Bill>,
}

impl Reservation<'_> {
    /// Meters `receipt.usage`, signs the next cumulative charge and the bill.
    pub fn finish(mut self, receipt: &Receipt, key: &SigningKey) -> Result<Billed, BillingRefusal> {
        let prices = self.billing.prices;
        let mut meters = self.billing.meters();
        self.open = false;
        let Some(m) = meters.get_mut(&self.channel) else {
            return Err(BillingRefusal::NoMeter);
        };
        m.reserved = m.reserved.saturating_sub(self.worst);
        let usage = receipt.usage;
        let amount = prices.cost(&usage);
        let charge = Charge {
            channel: m.address.clone(),
            channel_id: m.config.channel_id,
            seqno: m.seqno + 1,
            cumulative: m.cumulative + amount,
            prompt_tokens: m.prompt_tokens + u64::from(usage.prompt_tokens),
            completion_tokens: m.completion_tokens + u64::from(usage.completion_tokens),
            final_charge: false,
        };
        let signed = charge.sign(key)?;
        let boc = ChargeBoc {
            boc: signed.to_boc()?,
        };
        let bill = Bill {
            prev_hash: m.last_bill,
            receipt_hash: receipt_hash(receipt),
            prices,
            amount,
            charge: boc.clone(),
        };
        m.seqno = charge.seqno;
        m.cumulative = charge.cumulative;
        m.prompt_tokens = charge.prompt_tokens;
        m.completion_tokens = charge.completion_tokens;
        m.last_bill = bill_hash(&bill);
        Ok(Billed {
            charge: boc,
            bill: Signed::sign(bill, key),
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Some(m) = self.billing.meters().get_mut(&self.channel) {
                m.reserved = m.reserved.saturating_sub(self.worst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_protocol::billing::{BillChain, CHANNEL_WORKCHAIN};
    use chrysalis_protocol::ton;

    const ENCLAVE: [u8; 32] = [7; 32];
    const WALLET: [u8; 32] = [5; 32];
    const EVIDENCE: [u8; 32] = [1; 32];
    const EPHEMERAL: [u8; 32] = [2; 32];

    fn config() -> ChannelConfig {
        let wallet = SigningKey::from_bytes(&WALLET).verifying_key().to_bytes();
        ChannelConfig {
            client: ton::wallet_v5_address(&wallet).expect("wallet"),
            provider: TonAddress::new(0, [3u8; 32].into()),
            enclave_key: SigningKey::from_bytes(&ENCLAVE).verifying_key().to_bytes(),
            channel_id: 1,
            close_delay: 60,
            min_stake: 0,
        }
    }

    fn bound(billing: &Billing) -> BoundChannel {
        let bind = ChannelBind::new(
            &config(),
            &SigningKey::from_bytes(&WALLET),
            &EVIDENCE,
            &EPHEMERAL,
        )
        .expect("bind");
        billing
            .bind(&bind, &EVIDENCE, &EPHEMERAL, &config().enclave_key)
            .expect("bound")
    }

    fn status(b: &BoundChannel, deposited: u128) -> ChannelStatus {
        ChannelStatus {
            channel: b.key(),
            deposited,
            paid: 0,
            latest_charge: None,
        }
    }

    fn receipt(p: u32, c: u32) -> Receipt {
        Receipt {
            request_id: 1,
            evidence_hash: EVIDENCE,
            model_root: [0; 32],
            request_hash: [0; 32],
            usage: Usage {
                prompt_tokens: p,
                completion_tokens: c,
            },
            output_hash: [0; 32],
        }
    }

    const PRICES: Prices = Prices {
        prompt: 10,
        completion: 30,
    };

    #[test]
    fn requests_beyond_the_reported_deposit_are_refused() {
        let billing = Billing::new(PRICES, 100, 50);
        let b = bound(&billing);
        let none = billing.reserve(Some(&b), 50).err().expect("no report yet");
        assert!(none.to_string().contains("has not reported"), "{none}");
        // Worst case: 100 * 10 + 50 * 30 = 2500.
        billing.status(&b, &status(&b, 2_499)).expect("status");
        let short = billing.reserve(Some(&b), 50).err().expect("too little");
        assert!(short.to_string().contains("may cost up to 2500"), "{short}");
        billing.status(&b, &status(&b, 2_500)).expect("status");
        let r = billing
            .reserve(Some(&b), 50)
            .expect("covered")
            .expect("priced");
        // The reservation holds the deposit until it is finished or dropped.
        assert!(billing.reserve(Some(&b), 50).is_err());
        drop(r);
        assert!(billing.reserve(Some(&b), 50).is_ok());
    }

    #[test]
    fn finished_requests_give_a_chain_the_client_accepts() {
        let billing = Billing::new(PRICES, 100, 50);
        let b = bound(&billing);
        billing.status(&b, &status(&b, 1_000_000)).expect("status");
        let key = SigningKey::from_bytes(&ENCLAVE);
        let mut chain = BillChain::new(config()).expect("chain");
        let mut total = 0;
        for (p, c) in [(12, 4), (30, 50), (1, 1)] {
            let r = receipt(p, c);
            let res = billing.reserve(Some(&b), 50).expect("ok").expect("priced");
            let billed = res.finish(&r, &key).expect("billed");
            let checked = chain
                .check(&billed.bill, &r, &key.verifying_key().to_bytes())
                .expect("client accepts");
            total += u128::from(p) * 10 + u128::from(c) * 30;
            assert_eq!(checked.charge.cumulative, total);
            assert_eq!(billed.charge, checked.bill.charge);
        }
    }

    #[test]
    fn unbound_sessions_pay_only_when_serving_is_free() {
        let free = Billing::new(Prices::default(), 100, 50);
        assert!(free.reserve(None, 10).expect("free").is_none());
        let priced = Billing::new(PRICES, 100, 50);
        let err = priced.reserve(None, 10).err().expect("priced");
        assert!(err.to_string().contains("bind a payment channel"), "{err}");
    }

    #[test]
    fn a_reported_charge_resumes_the_count_only_if_this_enclave_signed_it() {
        let billing = Billing::new(PRICES, 100, 50);
        let b = bound(&billing);
        let cfg = config();
        let charge = |key: &[u8; 32]| {
            Charge {
                channel: cfg.address(CHANNEL_WORKCHAIN).expect("addr"),
                channel_id: cfg.channel_id,
                seqno: 9,
                cumulative: 900,
                prompt_tokens: 9,
                completion_tokens: 9,
                final_charge: false,
            }
            .sign(&SigningKey::from_bytes(key))
            .expect("sign")
            .to_boc()
            .expect("boc")
        };
        let mut report = status(&b, 1_000_000);
        report.latest_charge = Some(ChargeBoc {
            boc: charge(&[9; 32]),
        });
        billing.status(&b, &report).expect("status");
        let key = SigningKey::from_bytes(&ENCLAVE);
        let first = |billing: &Billing| {
            let res = billing.reserve(Some(&b), 1).expect("ok").expect("priced");
            let billed = res.finish(&receipt(1, 1), &key).expect("billed");
            SignedCharge::from_boc(&billed.charge.boc)
                .expect("charge")
                .charge
        };
        assert_eq!(first(&billing).seqno, 1, "a forged report is ignored");
        let billing = Billing::new(PRICES, 100, 50);
        let b = bound(&billing);
        report.channel = b.key();
        report.latest_charge = Some(ChargeBoc {
            boc: charge(&ENCLAVE),
        });
        billing.status(&b, &report).expect("status");
        let next = first(&billing);
        assert_eq!((next.seqno, next.cumulative), (10, 940));
    }
}
