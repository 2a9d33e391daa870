//! Byte parity between the Rust cells (`chrysalis_protocol::ton`) and `@ton/core`, and
//! execution of Rust-built messages in the TON emulator.
//!
//! The Rust side writes every cell and message of a fixed scenario as hex BOCs into a
//! JSON file; `contracts/test/parity.test.js` rebuilds each with `@ton/core`, compares
//! byte for byte, then deploys the channel through a Rust-signed wallet v5r1 message
//! and settles a Rust-signed charge in `@ton/sandbox`. The committed copy
//! (`contracts/test/fixtures/rust-cells.json`) lets `npm test` run the same check; this
//! test fails if that copy is stale (`CHRYSALIS_BLESS=1 cargo test -p
//! chrysalis-protocol --test ton_parity` rewrites it).

use std::path::{Path, PathBuf};
use std::process::Command;

use chrysalis_protocol::ton::{self, ChannelConfig, Charge, WalletV5};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tonlib_core::cell::Cell;
use tonlib_core::TonAddress;

const ENCLAVE_SEED: [u8; 32] = [7; 32];
const WALLET_SEED: [u8; 32] = [5; 32];
const DEPOSIT: u128 = 10_000_000_000;
const VALID_UNTIL: u32 = 1_800_000_600;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn hex_boc(cell: &Cell) -> String {
    hex::encode(ton::to_boc(cell).expect("serialise"))
}

fn raw(addr: &TonAddress) -> String {
    addr.to_hex()
}

/// Every cell of the scenario, with the inputs that produced it.
fn scenario() -> Value {
    let enclave = SigningKey::from_bytes(&ENCLAVE_SEED);
    let wallet = WalletV5::new(&SigningKey::from_bytes(&WALLET_SEED)).expect("wallet");
    let cfg = ChannelConfig {
        client: wallet.address().clone(),
        provider: TonAddress::new(0, [0xab; 32].into()),
        enclave_key: enclave.verifying_key().to_bytes(),
        channel_id: 42,
        close_delay: 3600,
        min_stake: 1_000_000_000,
    };
    let channel = cfg.address(0).expect("address");
    let charge = Charge {
        channel: channel.clone(),
        channel_id: 42,
        seqno: 3,
        cumulative: 1_234_567_890,
        prompt_tokens: 1000,
        completion_tokens: 2345,
        final_charge: false,
    };
    let signed = charge.sign(&enclave).expect("sign");
    let mut final_charge = charge.clone();
    final_charge.final_charge = true;
    final_charge.seqno = 4;
    let signed_final = final_charge.sign(&enclave).expect("sign");

    let settle = ton::settle_body(9, &signed).expect("settle");
    let top_up = ton::top_up_body(1, DEPOSIT).expect("top up");
    let init = cfg.state_init().expect("init");
    let deploy = ton::internal_message(&channel, DEPOSIT + 50_000_000, false, Some(&init), &top_up)
        .expect("deploy msg");
    let wallet_deploy = wallet
        .transfer(0, VALID_UNTIL, std::slice::from_ref(&deploy), true)
        .expect("wallet transfer");
    let withdraw = ton::withdraw_body(2, 500_000_000).expect("withdraw");
    let withdraw_msg =
        ton::internal_message(&channel, 50_000_000, true, None, &withdraw).expect("int");

    json!({
        "inputs": {
            "enclaveSeed": hex::encode(ENCLAVE_SEED),
            "walletSeed": hex::encode(WALLET_SEED),
            "client": raw(&cfg.client),
            "provider": raw(&cfg.provider),
            "channelId": cfg.channel_id.to_string(),
            "closeDelay": cfg.close_delay,
            "minStake": cfg.min_stake.to_string(),
            "deposit": DEPOSIT.to_string(),
            "validUntil": VALID_UNTIL,
            "charge": {
                "seqno": charge.seqno.to_string(),
                "cumulative": charge.cumulative.to_string(),
                "promptTokens": charge.prompt_tokens.to_string(),
                "completionTokens": charge.completion_tokens.to_string(),
            },
        },
        "channelAddress": raw(&channel),
        "walletAddress": raw(wallet.address()),
        "signature": hex::encode(signed.signature),
        "cells": {
            "config": hex_boc(&cfg.config_cell().expect("config")),
            "initialData": hex_boc(&cfg.initial_data_cell().expect("data")),
            "charge": hex_boc(&charge.to_cell().expect("charge")),
            "signedCharge": hex::encode(signed.to_boc().expect("signed")),
            "topUp": hex_boc(&top_up),
            "settle": hex_boc(&settle),
            "withdraw": hex_boc(&withdraw),
            "requestClose": hex_boc(&ton::request_close_body(3).expect("rc")),
            "finishClose": hex_boc(&ton::finish_close_body(4).expect("fc")),
            "cooperativeClose": hex_boc(&ton::cooperative_close_body(5, &signed_final).expect("cc")),
            "externalSettle": hex_boc(&ton::external_message(&channel, &settle).expect("ext")),
            "deployMessage": hex_boc(&deploy),
            "withdrawMessage": hex_boc(&withdraw_msg),
            "walletDeployTransfer": hex_boc(&wallet_deploy),
        },
    })
}

fn committed_path() -> PathBuf {
    repo_root().join("contracts/test/fixtures/rust-cells.json")
}

#[test]
fn committed_fixture_matches_rust_output() {
    let fresh = serde_json::to_string_pretty(&scenario()).expect("json") + "\n";
    let path = committed_path();
    if std::env::var_os("CHRYSALIS_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &fresh).expect("write fixture");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale or missing; rerun with CHRYSALIS_BLESS=1",
        path.display()
    );
}

#[test]
fn node_rebuilds_the_same_bytes_and_the_emulator_executes_them() {
    let contracts = repo_root().join("contracts");
    assert!(
        contracts.join("node_modules/@ton/sandbox").exists(),
        "contracts/node_modules is missing: run `npm ci --prefix contracts` (node >= 20)"
    );
    let dir = tempfile_dir();
    let fixture = dir.join("rust-cells.json");
    std::fs::write(&fixture, serde_json::to_string(&scenario()).expect("json")).expect("write");
    let out = Command::new("node")
        .args(["--test", "test/parity.test.js"])
        .current_dir(&contracts)
        .env("CHRYSALIS_RUST_CELLS", &fixture)
        .output()
        .expect("run node (is node >= 20 on PATH?)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "node parity test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chrysalis-ton-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
