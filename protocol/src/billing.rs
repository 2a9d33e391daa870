//! Billing inside a session: which channel pays, what the chain holds, and the
//! hash-chained bill the enclave signs for every paid response.
//!
//! The flow (DESIGN.md, "A request's path", step 5):
//!
//! 1. After [`crate::SessionAccept`], the client sends a plain [`ChannelBind`]: its
//!    channel's configuration, signed by the key of the client's wallet v5r1 over this
//!    session's evidence hash and ephemeral key. The shim sees it (it must: it reads the
//!    channel's deposit from the chain), but cannot forge or replay one, so nobody can
//!    bill usage to a channel they do not own.
//! 2. The shim appends a plain [`ChannelStatus`]: the deposit and the paid amount it
//!    read with `runGetMethod`, and the latest charge its ledger holds. The enclave
//!    trusts none of it for the client's sake: a deposit reported too high only lets
//!    the enclave sign charges the contract refuses (the provider's loss), one reported
//!    too low only refuses service, and a held-back charge only restarts the count.
//! 3. For each response the enclave sends the shim a plain [`crate::ChargeBoc`] (the
//!    cumulative signed charge) and then, sealed, a [`Signed`]`<`[`Bill`]`>` before the
//!    final [`crate::ResponseEnd`]. The shim commits the charge before relaying on.
//! 4. The client checks each bill with [`BillChain::check`]: signature, the receipt it
//!    names, prices times tokens, the cumulative charge inside it, and the chain link
//!    to the previous bill.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{array64, check_len, WireMessage};
use crate::messages::{ChargeBoc, Usage};
use crate::signing::{Receipt, Signable, Signed};
use crate::ton::{
    self, ChannelConfig, Charge, SignedCharge, TonAddress, TonError, MAX_CHANNEL_CONFIG_BOC,
    MAX_SIGNED_CHARGE_BOC,
};
use crate::ProtocolError;

/// Workchain every billed channel lives in (the base workchain).
pub const CHANNEL_WORKCHAIN: i32 = 0;

/// Domain label of what a [`ChannelBind`] signature covers.
pub const CHANNEL_BIND_LABEL: &[u8] = b"chrysalis/v1/channel-bind";

/// Domain label of [`bill_hash`].
pub const BILL_HASH_LABEL: &[u8] = b"chrysalis/v1/bill-hash";

/// Errors checking a channel binding or a bill.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BillingError {
    /// A TON cell or charge failed to parse or verify.
    #[error("{0}")]
    Ton(#[from] TonError),
    /// A signature or wire value was refused.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The channel names another enclave key.
    #[error("the channel is for enclave key {found}, expected this enclave's {expected}")]
    WrongEnclave {
        /// Key in the channel configuration, hex.
        found: String,
        /// This enclave's key, hex.
        expected: String,
    },
    /// The wallet key does not control the channel's client address.
    #[error("wallet key controls {found}, but the channel's client is {expected} (a wallet v5r1 is expected)")]
    NotTheClient {
        /// Address the key controls.
        found: String,
        /// The channel's client address.
        expected: String,
    },
    /// The client's binding signature does not verify.
    #[error("channel binding signature does not verify under wallet key {key}")]
    BadBindSignature {
        /// The wallet key, hex.
        key: String,
    },
    /// A bill disagrees with what the client received or saw before.
    #[error("bill check failed: {what}: found {found}, expected {expected}")]
    Mismatch {
        /// Which value.
        what: &'static str,
        /// What the bill says.
        found: String,
        /// What it should say.
        expected: String,
    },
}

fn mismatch(what: &'static str, found: impl ToString, expected: impl ToString) -> BillingError {
    BillingError::Mismatch {
        what,
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

/// Client to enclave, plain, inside a session: bill this session to a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelBind {
    /// The channel's configuration cell as a BOC ([`ChannelConfig::to_boc`]).
    pub config_boc: Vec<u8>,
    /// Public key of the client's wallet v5r1 (the configuration's `client`).
    pub wallet_pub: [u8; 32],
    /// Ed25519 by the wallet key over [`bind_message`].
    #[serde(with = "array64")]
    pub signature: [u8; 64],
}

/// What a [`ChannelBind`] signature covers: SHA-256(label ‖ evidence hash ‖ client
/// ephemeral key ‖ configuration cell hash). Tied to one session, so it cannot be
/// replayed into another.
pub fn bind_message(
    evidence_hash: &[u8; 32],
    client_ephemeral_pub: &[u8; 32],
    config: &ChannelConfig,
) -> Result<[u8; 32], TonError> {
    let mut h = Sha256::new();
    h.update(CHANNEL_BIND_LABEL);
    h.update(evidence_hash);
    h.update(client_ephemeral_pub);
    h.update(config.config_cell()?.cell_hash().as_slice());
    Ok(h.finalize().into())
}

impl ChannelBind {
    /// Signs a binding of this session to `config` with the client's wallet key.
    pub fn new(
        config: &ChannelConfig,
        wallet_key: &ed25519_dalek::SigningKey,
        evidence_hash: &[u8; 32],
        client_ephemeral_pub: &[u8; 32],
    ) -> Result<Self, TonError> {
        use ed25519_dalek::Signer;
        let message = bind_message(evidence_hash, client_ephemeral_pub, config)?;
        Ok(Self {
            config_boc: config.to_boc()?,
            wallet_pub: wallet_key.verifying_key().to_bytes(),
            signature: wallet_key.sign(&message).to_bytes(),
        })
    }

    /// The configuration it names, parsed but not verified (what the shim reads).
    pub fn config(&self) -> Result<ChannelConfig, TonError> {
        ChannelConfig::from_boc(&self.config_boc)
    }

    /// The enclave's check: the channel is for `enclave_key`, the wallet key controls
    /// the channel's client, and it signed this session. Returns the configuration and
    /// the channel's address.
    pub fn verify(
        &self,
        evidence_hash: &[u8; 32],
        client_ephemeral_pub: &[u8; 32],
        enclave_key: &[u8; 32],
    ) -> Result<(ChannelConfig, TonAddress), BillingError> {
        let config = self.config()?;
        if &config.enclave_key != enclave_key {
            return Err(BillingError::WrongEnclave {
                found: hex::encode(config.enclave_key),
                expected: hex::encode(enclave_key),
            });
        }
        let wallet = ton::wallet_v5_address(&self.wallet_pub)?;
        if wallet != config.client {
            return Err(BillingError::NotTheClient {
                found: wallet.to_string(),
                expected: config.client.to_string(),
            });
        }
        let bad = || BillingError::BadBindSignature {
            key: hex::encode(self.wallet_pub),
        };
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.wallet_pub).map_err(|_| bad())?;
        let message = bind_message(evidence_hash, client_ephemeral_pub, &config)?;
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&message, &signature).map_err(|_| bad())?;
        let address = config.address(CHANNEL_WORKCHAIN)?;
        Ok((config, address))
    }
}

impl WireMessage for ChannelBind {
    const NAME: &'static str = "channel bind";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        check_len(
            "channel config boc",
            self.config_boc.len(),
            MAX_CHANNEL_CONFIG_BOC,
        )
    }
}

/// Shim to enclave, plain: what the shim read about a channel. Untrusted by design.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// Hash part of the channel's address (workchain [`CHANNEL_WORKCHAIN`]).
    pub channel: [u8; 32],
    /// Nanotons deposited, from the contract's `channel_state` getter.
    pub deposited: u128,
    /// Nanotons paid to the provider so far, from the same getter.
    pub paid: u128,
    /// The newest charge the shim's ledger holds for the channel, if any.
    pub latest_charge: Option<ChargeBoc>,
}

impl WireMessage for ChannelStatus {
    const NAME: &'static str = "channel status";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        match &self.latest_charge {
            Some(c) => check_len("latest charge boc", c.boc.len(), MAX_SIGNED_CHARGE_BOC),
            None => Ok(()),
        }
    }
}

/// Prices the enclave charges, in nanotons per token; part of its measured
/// configuration (in a VM they come from the measured command line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prices {
    /// Per token of the rendered prompt.
    pub prompt: u64,
    /// Per generated token.
    pub completion: u64,
}

impl Prices {
    /// What `usage` costs, in nanotons.
    pub fn cost(&self, usage: &Usage) -> u128 {
        u128::from(usage.prompt_tokens) * u128::from(self.prompt)
            + u128::from(usage.completion_tokens) * u128::from(self.completion)
    }

    /// Whether serving is free (no channel needed).
    pub fn is_free(&self) -> bool {
        self.prompt == 0 && self.completion == 0
    }
}

/// The enclave's bill for one response: what it cost, the cumulative charge it
/// produced, and a link to the previous bill on the same channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// [`bill_hash`] of the previous bill on this channel; zeros for the first the
    /// enclave knows of.
    pub prev_hash: [u8; 32],
    /// SHA-256 of the response's [`Receipt`] signing bytes.
    pub receipt_hash: [u8; 32],
    /// Prices applied.
    pub prices: Prices,
    /// Nanotons this response cost.
    pub amount: u128,
    /// The cumulative signed charge after this response, as handed to the shim.
    pub charge: ChargeBoc,
}

impl WireMessage for Bill {
    const NAME: &'static str = "bill";

    fn check_bounds(&self) -> Result<(), ProtocolError> {
        check_len(
            "bill charge boc",
            self.charge.boc.len(),
            MAX_SIGNED_CHARGE_BOC,
        )
    }
}

impl Signable for Bill {
    const DOMAIN: &'static [u8] = b"chrysalis/v1/bill";
}

/// SHA-256 of a receipt's signing bytes: what a [`Bill`] names.
pub fn receipt_hash(receipt: &Receipt) -> [u8; 32] {
    Sha256::digest(receipt.signing_bytes()).into()
}

/// SHA-256(label ‖ signing bytes): the link the next bill carries.
pub fn bill_hash(bill: &Bill) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(BILL_HASH_LABEL);
    h.update(bill.signing_bytes());
    h.finalize().into()
}

/// A bill that passed [`BillChain::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedBill {
    /// The bill.
    pub bill: Bill,
    /// The charge inside it, parsed and verified.
    pub charge: Charge,
    /// Its [`bill_hash`].
    pub hash: [u8; 32],
}

/// The client's view of one channel's bill chain.
#[derive(Clone, Debug)]
pub struct BillChain {
    config: ChannelConfig,
    address: TonAddress,
    last: Option<CheckedBill>,
}

impl BillChain {
    /// A chain for `config`, with no bill seen yet.
    pub fn new(config: ChannelConfig) -> Result<Self, TonError> {
        let address = config.address(CHANNEL_WORKCHAIN)?;
        Ok(Self {
            config,
            address,
            last: None,
        })
    }

    /// The channel's address.
    pub fn address(&self) -> &TonAddress {
        &self.address
    }

    /// The newest bill accepted.
    pub fn last(&self) -> Option<&CheckedBill> {
        self.last.as_ref()
    }

    /// Checks a bill against the receipt it came with and the previous bill, then
    /// makes it the newest. `usage` is what the client counted itself (already
    /// compared with the receipt).
    pub fn check(
        &mut self,
        signed: &Signed<Bill>,
        receipt: &Receipt,
        enclave_key: &[u8; 32],
    ) -> Result<&CheckedBill, BillingError> {
        let bill = signed.verify(enclave_key)?;
        if bill.receipt_hash != receipt_hash(receipt) {
            return Err(mismatch(
                "receipt hash",
                hex::encode(bill.receipt_hash),
                hex::encode(receipt_hash(receipt)),
            ));
        }
        let usage = receipt.usage;
        let cost = bill.prices.cost(&usage);
        if bill.amount != cost {
            return Err(mismatch("amount", bill.amount, cost));
        }
        let charge = SignedCharge::from_boc(&bill.charge.boc)?;
        charge.verify_for(&self.address, &self.config)?;
        let c = charge.charge;
        if c.final_charge {
            return Err(mismatch("final bit", true, false));
        }
        self.check_link(bill, &c, &usage)?;
        Ok(self.last.insert(CheckedBill {
            bill: bill.clone(),
            charge: c,
            hash: bill_hash(bill),
        }))
    }

    /// Compares the new charge with the previous bill's (or, for the first, checks
    /// that it at least covers this response).
    fn check_link(&self, bill: &Bill, c: &Charge, usage: &Usage) -> Result<(), BillingError> {
        let (prev_hash, seqno, cumulative, prompt, completion) = match &self.last {
            Some(last) => (
                last.hash,
                last.charge.seqno,
                last.charge.cumulative,
                last.charge.prompt_tokens,
                last.charge.completion_tokens,
            ),
            None => {
                // First bill seen: the history before it is unknown here.
                let floor = (c.cumulative >= bill.amount)
                    && (c.prompt_tokens >= u64::from(usage.prompt_tokens))
                    && (c.completion_tokens >= u64::from(usage.completion_tokens));
                if !floor {
                    return Err(mismatch(
                        "cumulative charge",
                        c.cumulative,
                        format!("at least this response's {}", bill.amount),
                    ));
                }
                return Ok(());
            }
        };
        let checks = [
            (
                "previous bill hash",
                hex::encode(bill.prev_hash),
                hex::encode(prev_hash),
            ),
            ("charge seqno", c.seqno.to_string(), (seqno + 1).to_string()),
            (
                "cumulative charge",
                c.cumulative.to_string(),
                (cumulative + bill.amount).to_string(),
            ),
            (
                "cumulative prompt tokens",
                c.prompt_tokens.to_string(),
                (prompt + u64::from(usage.prompt_tokens)).to_string(),
            ),
            (
                "cumulative completion tokens",
                c.completion_tokens.to_string(),
                (completion + u64::from(usage.completion_tokens)).to_string(),
            ),
        ];
        match checks
            .into_iter()
            .find(|(_, found, expected)| found != expected)
        {
            Some((what, found, expected)) => Err(mismatch(what, found, expected)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const ENCLAVE: [u8; 32] = [7; 32];
    const WALLET: [u8; 32] = [5; 32];

    fn config() -> ChannelConfig {
        let wallet = SigningKey::from_bytes(&WALLET);
        ChannelConfig {
            client: ton::wallet_v5_address(wallet.verifying_key().as_bytes()).expect("addr"),
            provider: TonAddress::new(0, [2u8; 32].into()),
            enclave_key: SigningKey::from_bytes(&ENCLAVE).verifying_key().to_bytes(),
            channel_id: 9,
            close_delay: 60,
            min_stake: 0,
        }
    }

    fn receipt(id: u64, usage: Usage) -> Receipt {
        Receipt {
            request_id: id,
            evidence_hash: [1; 32],
            model_root: [2; 32],
            request_hash: [3; 32],
            usage,
            output_hash: [4; 32],
        }
    }

    /// Plays the enclave: the bill for `usage` after `prev`.
    fn bill_after(prev: Option<&CheckedBill>, r: &Receipt, prices: Prices) -> Signed<Bill> {
        let cfg = config();
        let amount = prices.cost(&r.usage);
        let (seqno, cum, p, c, prev_hash) = prev
            .map(|b| {
                let x = &b.charge;
                (
                    x.seqno,
                    x.cumulative,
                    x.prompt_tokens,
                    x.completion_tokens,
                    b.hash,
                )
            })
            .unwrap_or((0, 0, 0, 0, [0; 32]));
        let key = SigningKey::from_bytes(&ENCLAVE);
        let charge = Charge {
            channel: cfg.address(0).expect("addr"),
            channel_id: cfg.channel_id,
            seqno: seqno + 1,
            cumulative: cum + amount,
            prompt_tokens: p + u64::from(r.usage.prompt_tokens),
            completion_tokens: c + u64::from(r.usage.completion_tokens),
            final_charge: false,
        }
        .sign(&key)
        .expect("sign");
        let bill = Bill {
            prev_hash,
            receipt_hash: receipt_hash(r),
            prices,
            amount,
            charge: ChargeBoc {
                boc: charge.to_boc().expect("boc"),
            },
        };
        Signed::sign(bill, &key)
    }

    const PRICES: Prices = Prices {
        prompt: 1_000,
        completion: 3_000,
    };

    fn usage(p: u32, c: u32) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
        }
    }

    #[test]
    fn a_chain_of_honest_bills_is_accepted() {
        let mut chain = BillChain::new(config()).expect("chain");
        for (i, u) in [usage(10, 5), usage(30, 1), usage(7, 100)]
            .iter()
            .enumerate()
        {
            let r = receipt(i as u64, *u);
            let bill = bill_after(chain.last(), &r, PRICES);
            let key = SigningKey::from_bytes(&ENCLAVE).verifying_key().to_bytes();
            chain.check(&bill, &r, &key).expect("honest bill");
        }
        let last = chain.last().expect("last");
        assert_eq!(last.charge.cumulative, (47 * 1_000 + 106 * 3_000) as u128);
        assert_eq!(last.charge.seqno, 3);
    }

    #[test]
    fn a_bill_that_breaks_the_chain_or_the_arithmetic_is_refused() {
        let key = SigningKey::from_bytes(&ENCLAVE).verifying_key().to_bytes();
        let mut chain = BillChain::new(config()).expect("chain");
        let r1 = receipt(1, usage(10, 5));
        let b1 = bill_after(None, &r1, PRICES);
        chain.check(&b1, &r1, &key).expect("first");
        let r2 = receipt(2, usage(3, 3));
        // A bill that skips the previous one (prev hash zeros, seqno 1 again).
        let skipped = bill_after(None, &r2, PRICES);
        let err = chain.check(&skipped, &r2, &key).expect_err("broken chain");
        assert!(err.to_string().contains("previous bill hash"), "{err}");
        // A bill for another receipt.
        let good = bill_after(chain.last(), &r2, PRICES);
        let other = receipt(3, usage(3, 3));
        let err = chain.check(&good, &other, &key).expect_err("other receipt");
        assert!(err.to_string().contains("receipt hash"), "{err}");
        // A bill whose amount is not prices times tokens.
        let mut inflated = good.body.clone();
        inflated.amount += 1;
        let resigned = Signed::sign(inflated, &SigningKey::from_bytes(&ENCLAVE));
        let err = chain.check(&resigned, &r2, &key).expect_err("amount");
        assert!(err.to_string().contains("amount"), "{err}");
        // A bill signed by someone else.
        let forged = Signed::sign(good.body.clone(), &SigningKey::from_bytes(&[9; 32]));
        assert!(chain.check(&forged, &r2, &key).is_err());
        chain
            .check(&good, &r2, &key)
            .expect("the honest one still passes");
    }

    #[test]
    fn binding_verifies_only_for_the_wallet_owner_and_this_session() {
        let cfg = config();
        let enclave = cfg.enclave_key;
        let bind = ChannelBind::new(&cfg, &SigningKey::from_bytes(&WALLET), &[1; 32], &[2; 32])
            .expect("bind");
        let (back, addr) = bind.verify(&[1; 32], &[2; 32], &enclave).expect("verifies");
        assert_eq!(back, cfg);
        assert_eq!(addr, cfg.address(0).expect("addr"));
        // Replayed into another session.
        assert!(matches!(
            bind.verify(&[1; 32], &[3; 32], &enclave),
            Err(BillingError::BadBindSignature { .. })
        ));
        // Signed by a key that does not own the client wallet.
        let stranger =
            ChannelBind::new(&cfg, &SigningKey::from_bytes(&[8; 32]), &[1; 32], &[2; 32])
                .expect("bind");
        assert!(matches!(
            stranger.verify(&[1; 32], &[2; 32], &enclave),
            Err(BillingError::NotTheClient { .. })
        ));
        // For another enclave.
        assert!(matches!(
            bind.verify(&[1; 32], &[2; 32], &[4; 32]),
            Err(BillingError::WrongEnclave { .. })
        ));
    }
}
