//! Billing on TON: the payment channel's cells, signed charges and message BOCs.
//!
//! Mirrors `contracts/src/channel.tolk`; the TL-B of every layout is in
//! `contracts/README.md`. Cells are built with `tonlib-core` and serialised as
//! `@ton/core` does (`toBoc()`: no index, CRC-32C), so the bytes match a JavaScript
//! build exactly; `contracts/test/parity.test.js` checks that.
//!
//! The enclave signs a [`Charge`] with Ed25519 over the payload cell's representation
//! hash. The charge names the channel's own address and id, so it cannot be replayed
//! on another channel, and its cumulative amount only grows, so it applies once.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use num_bigint::BigUint;
use tonlib_core::cell::{ArcCell, BagOfCells, CellBuilder, CellParser, TonCellError};
/// Re-exported: the deploy message takes one.
pub use tonlib_core::tlb_types::block::state_init::StateInit;
use tonlib_core::tlb_types::tlb::TLB;
use tonlib_core::wallet::mnemonic::KeyPair;
use tonlib_core::wallet::ton_wallet::TonWallet;
use tonlib_core::wallet::wallet_version::WalletVersion;
use tonlib_core::TonHash;

/// Re-exported so callers need no direct `tonlib-core` dependency.
pub use tonlib_core::cell::Cell;
/// Re-exported so callers need no direct `tonlib-core` dependency.
pub use tonlib_core::TonAddress;

/// The compiled channel contract (`contracts/build/channel.code.boc`).
pub const CHANNEL_CODE_BOC: &[u8] = include_bytes!("../../contracts/build/channel.code.boc");

/// `top_up#1c0a0001 query_id:uint64 amount:Coins`
pub const OP_TOP_UP: u32 = 0x1c0a_0001;
/// `settle#1c0a0002 query_id:uint64 signature:bits512 charge:^ChargePayload`
pub const OP_SETTLE: u32 = 0x1c0a_0002;
/// `withdraw#1c0a0003 query_id:uint64 amount:Coins`
pub const OP_WITHDRAW: u32 = 0x1c0a_0003;
/// `request_close#1c0a0004 query_id:uint64`
pub const OP_REQUEST_CLOSE: u32 = 0x1c0a_0004;
/// `finish_close#1c0a0005 query_id:uint64`
pub const OP_FINISH_CLOSE: u32 = 0x1c0a_0005;
/// `cooperative_close#1c0a0006 query_id:uint64 signature:bits512 charge:^ChargePayload`
pub const OP_COOPERATIVE_CLOSE: u32 = 0x1c0a_0006;
/// Tag of `ChargePayload`.
pub const CHARGE_TAG: u32 = 0x1c0a_00c4;

/// Value every internal message to the channel must carry beyond the amount it
/// moves (the contract's `MIN_MESSAGE_FEE`, 0.01 TON).
pub const MIN_MESSAGE_FEE: u128 = 10_000_000;

/// Largest amount a `Coins` field holds: 15 bytes.
pub const MAX_COINS: u128 = (1u128 << 120) - 1;

/// Largest serialised channel configuration accepted from outside: one cell.
pub const MAX_CHANNEL_CONFIG_BOC: usize = 256;

/// Largest serialised signed charge accepted from outside: two small cells.
pub const MAX_SIGNED_CHARGE_BOC: usize = 512;

/// Errors building, parsing or verifying TON cells.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TonError {
    /// A cell could not be built, parsed or serialised.
    #[error("cell error: {0}")]
    Cell(#[from] TonCellError),
    /// An amount does not fit a `Coins` field.
    #[error("amount {found} nanotons exceeds the Coins maximum {max}")]
    AmountTooLarge {
        /// The amount given.
        found: u128,
        /// The largest representable amount.
        max: u128,
    },
    /// A charge cell starts with another tag.
    #[error("charge tag is {found:#010x}, expected {expected:#010x}")]
    WrongTag {
        /// The tag found.
        found: u32,
        /// The charge tag.
        expected: u32,
    },
    /// Serialised bytes are longer than the layout allows.
    #[error("signed charge is {found} bytes, at most {max} expected")]
    TooLong {
        /// Length received.
        found: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// A charge's signature does not verify under the enclave key.
    #[error("charge signature does not verify under enclave key {key}")]
    BadSignature {
        /// The enclave key, hex.
        key: String,
    },
    /// A charge names another channel.
    #[error("charge is for channel {found} id {found_id}, expected {expected} id {expected_id}")]
    WrongChannel {
        /// Channel address in the charge.
        found: String,
        /// Channel id in the charge.
        found_id: u64,
        /// This channel's address.
        expected: String,
        /// This channel's id.
        expected_id: u64,
    },
    /// A wallet message could not be built.
    #[error("wallet message: {0}")]
    Wallet(String),
}

fn coins(amount: u128) -> Result<BigUint, TonError> {
    if amount > MAX_COINS {
        return Err(TonError::AmountTooLarge {
            found: amount,
            max: MAX_COINS,
        });
    }
    Ok(BigUint::from(amount))
}

fn coins_to_u128(value: &BigUint) -> Result<u128, TonError> {
    // A Coins field holds at most 120 bits, so this only fails on a malformed cell.
    u128::try_from(value).map_err(|_| {
        TonError::Cell(TonCellError::CellParserError(
            "coins value above 128 bits".into(),
        ))
    })
}

/// Serialises a cell as `@ton/core`'s `toBoc()` does: cells in its topological order,
/// no index, CRC-32C. (`tonlib-core`'s own serialiser orders cells differently, and
/// not always the same way twice, so it cannot give byte parity.)
pub fn to_boc(root: &Cell) -> Result<Vec<u8>, TonError> {
    let cells = topological_order(root);
    let size_bytes = byte_len(cells.len() as u64);
    let mut body = Vec::new();
    for (cell, refs) in &cells {
        if cell.is_exotic() {
            return Err(TonError::Cell(TonCellError::BagOfCellsSerializationError(
                "exotic cells are not serialised here".into(),
            )));
        }
        write_cell(&mut body, cell, refs, size_bytes);
    }
    let offset_bytes = byte_len(body.len() as u64);
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(&0xb5ee_9c72u32.to_be_bytes());
    out.push(0b0100_0000 | size_bytes as u8); // no index, CRC-32C, no cache bits
    out.push(offset_bytes as u8);
    push_be(&mut out, cells.len() as u64, size_bytes); // cells
    push_be(&mut out, 1, size_bytes); // roots
    push_be(&mut out, 0, size_bytes); // absent
    push_be(&mut out, body.len() as u64, offset_bytes);
    push_be(&mut out, 0, size_bytes); // root index
    out.extend_from_slice(&body);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Bytes needed for `n` (at least one), as `@ton/core` sizes BOC fields.
fn byte_len(n: u64) -> usize {
    let bits = (64 - n.leading_zeros()) as usize;
    bits.div_ceil(8).max(1)
}

fn push_be(out: &mut Vec<u8>, value: u64, len: usize) {
    out.extend_from_slice(&value.to_be_bytes()[8 - len..]);
}

fn write_cell(out: &mut Vec<u8>, cell: &Cell, refs: &[usize], size_bytes: usize) {
    let bits = cell.bit_len();
    out.push(refs.len() as u8);
    out.push((bits.div_ceil(8) + bits / 8) as u8);
    let mut data = cell.data()[..bits.div_ceil(8)].to_vec();
    if !bits.is_multiple_of(8) {
        // Completion tag: a one bit right after the data, zeros after it.
        let last = data.len() - 1;
        let keep = 0xffu8 << (8 - bits % 8);
        data[last] = (data[last] & keep) | (1 << (7 - bits % 8));
    }
    out.extend_from_slice(&data);
    for r in refs {
        push_be(out, *r as u64, size_bytes);
    }
}

/// CRC-32C (Castagnoli, reflected), as BOC files carry it (little-endian, last).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82f6_3b78 & mask);
        }
    }
    !crc
}

/// `@ton/core`'s `topologicalSort`: cells collected breadth first (deduplicated by
/// hash), then a depth-first post-order from the first unvisited cell, children
/// visited last to first, reversed. Returns each cell with its children's indices.
fn topological_order(root: &Cell) -> Vec<(&Cell, Vec<usize>)> {
    let mut bfs: Vec<&Cell> = Vec::new();
    let mut seen: HashMap<TonHash, usize> = HashMap::new();
    let mut pending: Vec<&Cell> = vec![root];
    while !pending.is_empty() {
        let mut next = Vec::new();
        for cell in pending {
            if seen.contains_key(&cell.cell_hash()) {
                continue;
            }
            seen.insert(cell.cell_hash(), bfs.len());
            bfs.push(cell);
            next.extend(cell.references().iter().map(|r| r.as_ref()));
        }
        pending = next;
    }
    let mut done = vec![false; bfs.len()];
    let mut post: Vec<usize> = Vec::with_capacity(bfs.len());
    for start in 0..bfs.len() {
        visit(start, &bfs, &seen, &mut done, &mut post);
    }
    let mut position = vec![0usize; bfs.len()];
    for (i, &node) in post.iter().rev().enumerate() {
        position[node] = i;
    }
    post.iter()
        .rev()
        .map(|&node| {
            let refs = bfs[node]
                .references()
                .iter()
                .map(|r| position[seen[&Cell::cell_hash(r)]])
                .collect();
            (bfs[node], refs)
        })
        .collect()
}

fn visit(
    node: usize,
    bfs: &[&Cell],
    seen: &HashMap<TonHash, usize>,
    done: &mut [bool],
    post: &mut Vec<usize>,
) {
    if done[node] {
        return;
    }
    // Cells form a DAG, so marking before the children cannot hide a cycle here.
    done[node] = true;
    for r in bfs[node].references().iter().rev() {
        visit(seen[&Cell::cell_hash(r)], bfs, seen, done, post);
    }
    post.push(node);
}

/// Refuses serialised bytes longer than a layout allows, before any parsing.
fn check_boc_len(bytes: &[u8], max: usize) -> Result<(), TonError> {
    if bytes.len() > max {
        return Err(TonError::TooLong {
            found: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// Parses a BOC with exactly one root and at most `max_cells` cells.
///
/// The header is checked here first: `tonlib-core` allocates for the cell count a
/// header claims, so an unchecked 30-byte input could abort the process.
pub fn from_boc(bytes: &[u8], max_cells: usize) -> Result<ArcCell, TonError> {
    check_boc_header(bytes, max_cells)?;
    Ok(BagOfCells::parse(bytes)?.single_root()?)
}

fn boc_error(what: String) -> TonError {
    TonError::Cell(TonCellError::BagOfCellsDeserializationError(what))
}

fn read_be(bytes: &[u8], at: usize, len: usize) -> Result<u64, TonError> {
    let field = bytes
        .get(at..at + len)
        .ok_or_else(|| boc_error(format!("header ends at byte {at}, {len} more expected")))?;
    Ok(field.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Bounds every count in a BOC header against `max_cells` and the input length.
fn check_boc_header(bytes: &[u8], max_cells: usize) -> Result<(), TonError> {
    let magic = read_be(bytes, 0, 4)?;
    if magic != 0xb5ee_9c72 {
        return Err(boc_error(format!(
            "magic {magic:#010x}, expected 0xb5ee9c72"
        )));
    }
    let flags = read_be(bytes, 4, 1)? as usize;
    let size_bytes = flags & 0b111;
    let offset_bytes = read_be(bytes, 5, 1)? as usize;
    if !(1..=4).contains(&size_bytes) || !(1..=8).contains(&offset_bytes) {
        return Err(boc_error(format!(
            "field widths {size_bytes}/{offset_bytes} bytes, expected 1-4/1-8"
        )));
    }
    let cells = read_be(bytes, 6, size_bytes)?;
    let roots = read_be(bytes, 6 + size_bytes, size_bytes)?;
    let total = read_be(bytes, 6 + 3 * size_bytes, offset_bytes)?;
    if cells == 0 || cells > max_cells as u64 {
        return Err(boc_error(format!(
            "{cells} cells, 1 to {max_cells} expected"
        )));
    }
    if roots != 1 {
        return Err(boc_error(format!("{roots} roots, 1 expected")));
    }
    if total > bytes.len() as u64 || total < 2 * cells {
        return Err(boc_error(format!(
            "cell data of {total} bytes in a {}-byte BOC with {cells} cells",
            bytes.len()
        )));
    }
    let root = read_be(bytes, 6 + 3 * size_bytes + offset_bytes, size_bytes)?;
    if root >= cells {
        return Err(boc_error(format!(
            "root index {root}, below {cells} expected"
        )));
    }
    let mut at = 6 + 4 * size_bytes + offset_bytes;
    if flags & 0b1000_0000 != 0 {
        at += cells as usize * offset_bytes; // index: skipped, cells are walked below
    }
    for i in 0..cells {
        at = check_cell(bytes, at, i, cells, size_bytes)?;
    }
    check_crc(bytes, at, flags & 0b0100_0000 != 0)
}

/// Walks one raw cell: ordinary, at most 4 references, each to a later cell (the
/// checks `tonlib-core` would otherwise make by panicking). Returns the next offset.
fn check_cell(
    bytes: &[u8],
    at: usize,
    index: u64,
    cells: u64,
    size_bytes: usize,
) -> Result<usize, TonError> {
    let d1 = read_be(bytes, at, 1)?;
    let d2 = read_be(bytes, at + 1, 1)? as usize;
    let refs = d1 & 0b111;
    if d1 & !0b111 != 0 || refs > 4 {
        return Err(boc_error(format!("cell {index}: descriptor {d1:#04x}, an ordinary cell with at most 4 references expected")));
    }
    let mut next = at + 2 + d2.div_ceil(2);
    for _ in 0..refs {
        let r = read_be(bytes, next, size_bytes)?;
        if r <= index || r >= cells {
            return Err(boc_error(format!(
                "cell {index} refers to cell {r}, expected one in {}..{cells}",
                index + 1
            )));
        }
        next += size_bytes;
    }
    Ok(next)
}

/// Checks the trailing CRC-32C when the header announces one, and that nothing
/// follows.
fn check_crc(bytes: &[u8], at: usize, has_crc: bool) -> Result<(), TonError> {
    let end = if has_crc { at + 4 } else { at };
    if bytes.len() != end {
        return Err(boc_error(format!(
            "BOC is {} bytes, {end} expected",
            bytes.len()
        )));
    }
    if has_crc {
        let found = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let expected = crc32c(&bytes[..at]);
        if found != expected {
            return Err(boc_error(format!(
                "CRC-32C {found:#010x}, expected {expected:#010x}"
            )));
        }
    }
    Ok(())
}

/// The compiled channel code cell.
pub fn channel_code() -> Result<ArcCell, TonError> {
    from_boc(CHANNEL_CODE_BOC, MAX_CODE_CELLS)
}

/// Most cells the channel code may have (it has about 20).
const MAX_CODE_CELLS: usize = 256;

/// Cells in a signed charge: the signature cell and the payload.
const SIGNED_CHARGE_CELLS: usize = 2;

/// A channel's fixed configuration; with the code it determines the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The client's wallet: deposits, withdraws, closes, receives refunds.
    pub client: TonAddress,
    /// Where settled charges are paid.
    pub provider: TonAddress,
    /// The enclave's Ed25519 public key, bound in its attestation.
    pub enclave_key: [u8; 32],
    /// Distinguishes channels between the same parties.
    pub channel_id: u64,
    /// Seconds between `request_close` and `finish_close`.
    pub close_delay: u32,
    /// Nanotons the client cannot withdraw while the channel is open.
    pub min_stake: u128,
}

impl ChannelConfig {
    /// `channel_config$_` cell.
    pub fn config_cell(&self) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_address(&self.client)?
            .store_address(&self.provider)?
            .store_slice(&self.enclave_key)?
            .store_u64(64, self.channel_id)?
            .store_u32(32, self.close_delay)?
            .store_coins(&coins(self.min_stake)?)?;
        Ok(b.build()?)
    }

    /// Parses a `channel_config$_` cell, refusing trailing data.
    pub fn from_config_cell(cell: &Cell) -> Result<Self, TonError> {
        let mut p = cell.parser();
        let client = p.load_address()?;
        let provider = p.load_address()?;
        let mut enclave_key = [0u8; 32];
        p.load_slice(&mut enclave_key)?;
        let config = Self {
            client,
            provider,
            enclave_key,
            channel_id: p.load_u64(64)?,
            close_delay: p.load_u32(32)?,
            min_stake: coins_to_u128(&p.load_coins()?)?,
        };
        p.ensure_empty()?;
        Ok(config)
    }

    /// The configuration cell as a BOC, for a client to name its channel.
    pub fn to_boc(&self) -> Result<Vec<u8>, TonError> {
        to_boc(&self.config_cell()?)
    }

    /// Parses a configuration BOC from an untrusted source (one cell, bounded).
    pub fn from_boc(bytes: &[u8]) -> Result<Self, TonError> {
        check_boc_len(bytes, MAX_CHANNEL_CONFIG_BOC)?;
        Self::from_config_cell(from_boc(bytes, 1)?.as_ref())
    }

    /// The initial `storage$_` cell: nothing deposited, nothing paid, open.
    pub fn initial_data_cell(&self) -> Result<Cell, TonError> {
        let zero = BigUint::from(0u8);
        let mut b = CellBuilder::new();
        b.store_child(self.config_cell()?)?
            .store_coins(&zero)?
            .store_coins(&zero)?
            .store_u64(64, 0)?
            .store_u8(2, 0)?
            .store_u32(32, 0)?;
        Ok(b.build()?)
    }

    /// The state init that deploys this channel.
    pub fn state_init(&self) -> Result<StateInit, TonError> {
        Ok(StateInit::new(
            channel_code()?,
            self.initial_data_cell()?.to_arc(),
        ))
    }

    /// The channel's address in `workchain`.
    pub fn address(&self, workchain: i32) -> Result<TonAddress, TonError> {
        Ok(TonAddress::new(workchain, self.state_init()?.cell_hash()?))
    }
}

/// A cumulative charge for one channel, as the enclave signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The channel contract's address.
    pub channel: TonAddress,
    /// The channel id from its configuration.
    pub channel_id: u64,
    /// Number of charges signed for this channel so far.
    pub seqno: u64,
    /// Total nanotons owed since the channel opened.
    pub cumulative: u128,
    /// Total prompt tokens metered.
    pub prompt_tokens: u64,
    /// Total completion tokens metered.
    pub completion_tokens: u64,
    /// Set on the last charge, for a cooperative close.
    pub final_charge: bool,
}

impl Charge {
    /// `charge#1c0a00c4` cell.
    pub fn to_cell(&self) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_u32(32, CHARGE_TAG)?
            .store_address(&self.channel)?
            .store_u64(64, self.channel_id)?
            .store_u64(64, self.seqno)?
            .store_coins(&coins(self.cumulative)?)?
            .store_u64(64, self.prompt_tokens)?
            .store_u64(64, self.completion_tokens)?
            .store_bit(self.final_charge)?;
        Ok(b.build()?)
    }

    /// Parses a charge cell, refusing another tag and trailing data.
    pub fn from_cell(cell: &Cell) -> Result<Self, TonError> {
        let mut p = cell.parser();
        let tag = p.load_u32(32)?;
        if tag != CHARGE_TAG {
            return Err(TonError::WrongTag {
                found: tag,
                expected: CHARGE_TAG,
            });
        }
        let charge = Self::load_fields(&mut p)?;
        p.ensure_empty()?;
        Ok(charge)
    }

    fn load_fields(p: &mut CellParser) -> Result<Self, TonError> {
        Ok(Self {
            channel: p.load_address()?,
            channel_id: p.load_u64(64)?,
            seqno: p.load_u64(64)?,
            cumulative: coins_to_u128(&p.load_coins()?)?,
            prompt_tokens: p.load_u64(64)?,
            completion_tokens: p.load_u64(64)?,
            final_charge: p.load_bit()?,
        })
    }

    /// Signs the cell's representation hash.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedCharge, TonError> {
        let hash = self.to_cell()?.cell_hash();
        let signature = key.sign(hash.as_slice()).to_bytes();
        Ok(SignedCharge {
            charge: self.clone(),
            signature,
        })
    }
}

/// A charge with the enclave's signature: `signature:bits512 charge:^ChargePayload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCharge {
    /// What was signed.
    pub charge: Charge,
    /// Ed25519 over the charge cell's representation hash.
    pub signature: [u8; 64],
}

impl SignedCharge {
    /// Checks the signature under the enclave key.
    pub fn verify(&self, enclave_key: &[u8; 32]) -> Result<(), TonError> {
        let bad = || TonError::BadSignature {
            key: hex::encode(enclave_key),
        };
        let key = VerifyingKey::from_bytes(enclave_key).map_err(|_| bad())?;
        let hash = self.charge.to_cell()?.cell_hash();
        key.verify(hash.as_slice(), &Signature::from_bytes(&self.signature))
            .map_err(|_| bad())
    }

    /// Checks the signature and that the charge is for this channel.
    pub fn verify_for(&self, channel: &TonAddress, config: &ChannelConfig) -> Result<(), TonError> {
        self.verify(&config.enclave_key)?;
        let c = &self.charge;
        if &c.channel != channel || c.channel_id != config.channel_id {
            return Err(TonError::WrongChannel {
                found: c.channel.to_string(),
                found_id: c.channel_id,
                expected: channel.to_string(),
                expected_id: config.channel_id,
            });
        }
        Ok(())
    }

    /// The `SignedCharge` cell (signature, then a reference to the payload).
    pub fn to_cell(&self) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_slice(&self.signature)?
            .store_child(self.charge.to_cell()?)?;
        Ok(b.build()?)
    }

    /// Serialised form for storage and transport between enclave, shim and client.
    pub fn to_boc(&self) -> Result<Vec<u8>, TonError> {
        to_boc(&self.to_cell()?)
    }

    /// Parses bytes from an untrusted source; bounded before any parsing.
    pub fn from_boc(bytes: &[u8]) -> Result<Self, TonError> {
        check_boc_len(bytes, MAX_SIGNED_CHARGE_BOC)?;
        let root = from_boc(bytes, SIGNED_CHARGE_CELLS)?;
        let mut p = root.parser();
        let mut signature = [0u8; 64];
        p.load_slice(&mut signature)?;
        let payload = p.next_reference()?;
        p.ensure_empty()?;
        Ok(Self {
            charge: Charge::from_cell(&payload)?,
            signature,
        })
    }
}

fn op_header(op: u32, query_id: u64) -> Result<CellBuilder, TonError> {
    let mut b = CellBuilder::new();
    b.store_u32(32, op)?.store_u64(64, query_id)?;
    Ok(b)
}

fn op_with_amount(op: u32, query_id: u64, amount: u128) -> Result<Cell, TonError> {
    let mut b = op_header(op, query_id)?;
    b.store_coins(&coins(amount)?)?;
    Ok(b.build()?)
}

fn op_with_charge(op: u32, query_id: u64, signed: &SignedCharge) -> Result<Cell, TonError> {
    let mut b = op_header(op, query_id)?;
    b.store_slice(&signed.signature)?
        .store_child(signed.charge.to_cell()?)?;
    Ok(b.build()?)
}

/// Body of a `top_up` depositing `amount` nanotons (send `amount + MIN_MESSAGE_FEE`).
pub fn top_up_body(query_id: u64, amount: u128) -> Result<Cell, TonError> {
    op_with_amount(OP_TOP_UP, query_id, amount)
}

/// Body of a `settle` submitting a signed cumulative charge.
pub fn settle_body(query_id: u64, signed: &SignedCharge) -> Result<Cell, TonError> {
    op_with_charge(OP_SETTLE, query_id, signed)
}

/// Body of a `cooperative_close` with the final signed charge (client only).
pub fn cooperative_close_body(query_id: u64, signed: &SignedCharge) -> Result<Cell, TonError> {
    op_with_charge(OP_COOPERATIVE_CLOSE, query_id, signed)
}

/// Body of a `withdraw` of `amount` nanotons (client only).
pub fn withdraw_body(query_id: u64, amount: u128) -> Result<Cell, TonError> {
    op_with_amount(OP_WITHDRAW, query_id, amount)
}

/// Body of a `request_close` (client only).
pub fn request_close_body(query_id: u64) -> Result<Cell, TonError> {
    Ok(op_header(OP_REQUEST_CLOSE, query_id)?.build()?)
}

/// Body of a `finish_close` (anyone, after the delay).
pub fn finish_close_body(query_id: u64) -> Result<Cell, TonError> {
    Ok(op_header(OP_FINISH_CLOSE, query_id)?.build()?)
}

/// Stores `body` as `Either X ^X`, inline when it fits (the rule `@ton/core` uses).
fn store_body(b: &mut CellBuilder, body: &Cell, refs_used: usize) -> Result<(), TonError> {
    let fits_bits = body.bit_len() < b.remaining_bits();
    let fits_refs = refs_used + body.references().len() <= 4;
    if fits_bits && fits_refs {
        b.store_bit(false)?.store_cell(body)?;
    } else {
        b.store_bit(true)?.store_child(body.clone())?;
    }
    Ok(())
}

/// An inbound external message (`ext_in_msg_info$10`, no state init) carrying `body`
/// to `dest`. The channel accepts `settle` this way, so no wallet is needed.
pub fn external_message(dest: &TonAddress, body: &Cell) -> Result<Cell, TonError> {
    let mut b = CellBuilder::new();
    b.store_u8(2, 0b10)?
        .store_u8(2, 0b00)? // src: addr_none
        .store_address(dest)?
        .store_coins(&BigUint::from(0u8))? // import_fee
        .store_bit(false)?; // no state init
    store_body(&mut b, body, 0)?;
    Ok(b.build()?)
}

/// An internal message as a wallet sends it (`MessageRelaxed`, source left empty),
/// like `@ton/core`'s `internal({ to, value, bounce, init, body })`.
pub fn internal_message(
    dest: &TonAddress,
    value: u128,
    bounce: bool,
    init: Option<&StateInit>,
    body: &Cell,
) -> Result<Cell, TonError> {
    let zero = BigUint::from(0u8);
    let mut b = CellBuilder::new();
    b.store_bit(false)? // int_msg_info$0
        .store_bit(true)? // ihr_disabled
        .store_bit(bounce)?
        .store_bit(false)? // bounced
        .store_u8(2, 0b00)? // src: addr_none
        .store_address(dest)?
        .store_coins(&coins(value)?)?
        .store_bit(false)? // no extra currencies
        .store_coins(&zero)? // ihr_fee
        .store_coins(&zero)? // fwd_fee
        .store_u64(64, 0)? // created_lt
        .store_u32(32, 0)?; // created_at
    let mut refs_used = 0;
    match init {
        None => {
            b.store_bit(false)?;
        }
        Some(init) => {
            let init_cell = init.to_cell()?;
            b.store_bit(true)?;
            // @ton/core inlines the state init when it and the body fit the bits left.
            if b.remaining_bits() - 2 < init_cell.bit_len() + body.bit_len() {
                b.store_bit(true)?.store_child(init_cell)?;
                refs_used = 1;
            } else {
                refs_used = init_cell.references().len();
                b.store_bit(false)?.store_cell(&init_cell)?;
            }
        }
    }
    store_body(&mut b, body, refs_used)?;
    Ok(b.build()?)
}

/// The state init as a cell (for wallets that take it separately).
pub fn state_init_cell(init: &StateInit) -> Result<Cell, TonError> {
    Ok(init.to_cell()?)
}

/// The address of the wallet v5r1 (base workchain, mainnet wallet id) that the
/// Ed25519 public key `public_key` controls; what [`WalletV5::address`] gives for
/// the matching secret key.
pub fn wallet_v5_address(public_key: &[u8; 32]) -> Result<TonAddress, TonError> {
    let pair = KeyPair {
        public_key: public_key.to_vec(),
        // Deriving the address reads only the public key.
        secret_key: Vec::new(),
    };
    Ok(TonWallet::new(WalletVersion::V5R1, pair)?.address)
}

/// A wallet v5r1 (`subwallet` = mainnet default) signing internal messages.
pub struct WalletV5 {
    wallet: TonWallet,
}

impl std::fmt::Debug for WalletV5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("WalletV5")
            .field("address", &self.wallet.address)
            .finish()
    }
}

impl WalletV5 {
    /// A v5r1 wallet in the base workchain controlled by this Ed25519 key.
    pub fn new(key: &SigningKey) -> Result<Self, TonError> {
        let mut secret_key = key.to_bytes().to_vec();
        secret_key.extend_from_slice(key.verifying_key().as_bytes());
        let pair = KeyPair {
            public_key: key.verifying_key().as_bytes().to_vec(),
            secret_key,
        };
        let wallet = TonWallet::new(WalletVersion::V5R1, pair)?;
        Ok(Self { wallet })
    }

    /// The wallet's address.
    pub fn address(&self) -> &TonAddress {
        &self.wallet.address
    }

    /// A signed external message that makes the wallet send `messages` (send mode 3).
    /// `with_state_init` deploys the wallet with its first transfer (seqno 0).
    pub fn transfer(
        &self,
        seqno: u32,
        valid_until: u32,
        messages: &[Cell],
        with_state_init: bool,
    ) -> Result<Cell, TonError> {
        let arcs: Vec<ArcCell> = messages.iter().cloned().map(Arc::new).collect();
        self.wallet
            .create_external_msg(valid_until, seqno, with_state_init, arcs)
            .map_err(|e| TonError::Wallet(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_config() -> ChannelConfig {
        ChannelConfig {
            client: TonAddress::new(0, [1u8; 32].into()),
            provider: TonAddress::new(0, [2u8; 32].into()),
            enclave_key: SigningKey::from_bytes(&[7u8; 32])
                .verifying_key()
                .to_bytes(),
            channel_id: 42,
            close_delay: 3600,
            min_stake: 1_000_000_000,
        }
    }

    fn sample_charge(channel: TonAddress) -> Charge {
        Charge {
            channel,
            channel_id: 42,
            seqno: 3,
            cumulative: 1_500_000_000,
            prompt_tokens: 10,
            completion_tokens: 20,
            final_charge: false,
        }
    }

    #[test]
    fn signed_charge_round_trips_and_verifies() {
        let cfg = sample_config();
        let addr = cfg.address(0).expect("address");
        let signed = sample_charge(addr.clone())
            .sign(&SigningKey::from_bytes(&[7u8; 32]))
            .expect("sign");
        let bytes = signed.to_boc().expect("boc");
        let back = SignedCharge::from_boc(&bytes).expect("parse");
        assert_eq!(back, signed);
        back.verify_for(&addr, &cfg).expect("verifies");
    }

    #[test]
    fn changing_one_field_breaks_the_signature() {
        let cfg = sample_config();
        let addr = cfg.address(0).expect("address");
        let mut signed = sample_charge(addr.clone())
            .sign(&SigningKey::from_bytes(&[7u8; 32]))
            .expect("sign");
        signed.charge.cumulative += 1;
        assert!(matches!(
            signed.verify(&cfg.enclave_key),
            Err(TonError::BadSignature { .. })
        ));
    }

    #[test]
    fn charge_for_another_channel_is_refused() {
        let cfg = sample_config();
        let addr = cfg.address(0).expect("address");
        let mut other = sample_charge(addr.clone());
        other.channel_id = 43;
        let signed = other
            .sign(&SigningKey::from_bytes(&[7u8; 32]))
            .expect("sign");
        assert!(matches!(
            signed.verify_for(&addr, &cfg),
            Err(TonError::WrongChannel { found_id: 43, .. })
        ));
    }

    #[test]
    fn amounts_above_coins_range_are_refused() {
        assert!(matches!(
            top_up_body(0, MAX_COINS + 1),
            Err(TonError::AmountTooLarge { .. })
        ));
        assert!(top_up_body(0, MAX_COINS).is_ok());
    }

    #[test]
    fn oversized_or_garbage_bytes_are_errors_not_panics() {
        assert!(matches!(
            SignedCharge::from_boc(&[0u8; MAX_SIGNED_CHARGE_BOC + 1]),
            Err(TonError::TooLong { .. })
        ));
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(SignedCharge::from_boc(&junk).is_err());
        }
    }

    #[test]
    fn channel_config_round_trips_through_its_boc() {
        let cfg = sample_config();
        let back = ChannelConfig::from_boc(&cfg.to_boc().expect("boc")).expect("parse");
        assert_eq!(back, cfg);
        assert!(matches!(
            ChannelConfig::from_boc(&[0u8; MAX_CHANNEL_CONFIG_BOC + 1]),
            Err(TonError::TooLong { .. })
        ));
    }

    #[test]
    fn wallet_address_from_public_key_matches_the_wallet() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let wallet = WalletV5::new(&key).expect("wallet");
        let derived = wallet_v5_address(key.verifying_key().as_bytes()).expect("address");
        assert_eq!(&derived, wallet.address());
        let other = wallet_v5_address(
            &SigningKey::from_bytes(&[6u8; 32])
                .verifying_key()
                .to_bytes(),
        )
        .expect("address");
        assert_ne!(&other, wallet.address());
    }

    #[test]
    fn wrong_tag_is_named() {
        let mut b = CellBuilder::new();
        b.store_u32(32, 0xdead_beef).expect("store");
        let cell = b.build().expect("build");
        let err = Charge::from_cell(&cell).expect_err("tag");
        assert!(err.to_string().contains("0xdeadbeef"), "{err}");
    }
}
