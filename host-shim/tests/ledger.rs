//! The SQLite ledger on a real database file: recording rules, durability settings,
//! the settlement policy and outbox states.

use std::time::Duration;

use chrysalis_protocol::ton::{ChannelConfig, Charge, SignedCharge, TonAddress};
use chrysalis_shim::ledger::{Ledger, LedgerError, OutboxState, Recorded, SettlementPolicy};
use ed25519_dalek::SigningKey;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ledger: Ledger,
    key: SigningKey,
    channel: TonAddress,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.sqlite");
    let key = SigningKey::from_bytes(&[7; 32]);
    let config = ChannelConfig {
        client: TonAddress::new(0, [1; 32].into()),
        provider: TonAddress::new(0, [2; 32].into()),
        enclave_key: key.verifying_key().to_bytes(),
        channel_id: 42,
        close_delay: 3600,
        min_stake: 0,
    };
    let channel = config.address(0).expect("address");
    let mut ledger = Ledger::open(&path).expect("open");
    ledger
        .register_channel(&channel, &config)
        .expect("register");
    Fixture {
        _dir: dir,
        path,
        ledger,
        key,
        channel,
    }
}

impl Fixture {
    fn charge(&self, seqno: u64, cumulative: u128) -> SignedCharge {
        Charge {
            channel: self.channel.clone(),
            channel_id: 42,
            seqno,
            cumulative,
            prompt_tokens: seqno * 10,
            completion_tokens: seqno * 20,
            final_charge: false,
        }
        .sign(&self.key)
        .expect("sign")
    }
}

#[test]
fn database_runs_in_wal_with_full_sync_and_survives_reopen() {
    let mut f = fixture();
    let c = f.charge(1, 100);
    assert_eq!(
        f.ledger.record_charge(&c, 1000).expect("record"),
        Recorded::New
    );
    drop(f.ledger);
    let conn = rusqlite::Connection::open(&f.path).expect("raw open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let reopened = Ledger::open(&f.path).expect("reopen");
    let bal = reopened
        .balance(&f.channel)
        .expect("balance")
        .expect("present");
    assert_eq!((bal.seqno, bal.cumulative, bal.confirmed), (1, 100, 0));
    f.ledger = reopened;
}

#[test]
fn duplicates_are_idempotent_and_older_or_conflicting_charges_are_refused() {
    let mut f = fixture();
    let first = f.charge(1, 100);
    assert_eq!(
        f.ledger.record_charge(&first, 1).expect("new"),
        Recorded::New
    );
    assert_eq!(
        f.ledger.record_charge(&first, 2).expect("dup"),
        Recorded::Duplicate
    );
    let conflicting = f.charge(1, 150);
    assert!(matches!(
        f.ledger.record_charge(&conflicting, 3),
        Err(LedgerError::ConflictingCharge { seqno: 1, .. })
    ));
    f.ledger
        .record_charge(&f.charge(3, 300), 4)
        .expect("gap allowed");
    assert!(matches!(
        f.ledger.record_charge(&f.charge(2, 200), 5),
        Err(LedgerError::StaleCharge {
            found: 2,
            latest: 3,
            ..
        })
    ));
    let err = f
        .ledger
        .record_charge(&f.charge(4, 299), 6)
        .expect_err("decreasing");
    assert!(matches!(
        err,
        LedgerError::DecreasingCharge {
            found: 299,
            latest: 300,
            ..
        }
    ));
    assert!(err.to_string().contains("below the recorded 300"), "{err}");
    assert_eq!(
        f.ledger.charges(&f.channel).expect("charges"),
        vec![(1, 100), (3, 300)]
    );
}

#[test]
fn forged_and_unregistered_charges_are_refused() {
    let mut f = fixture();
    let mut forged = f.charge(1, 100);
    forged.charge.cumulative = 1_000_000;
    assert!(matches!(
        f.ledger.record_charge(&forged, 1),
        Err(LedgerError::Ton(_))
    ));
    let mut stranger = f.charge(1, 100);
    stranger.charge.channel = TonAddress::new(0, [9; 32].into());
    let stranger = stranger.charge.sign(&f.key).expect("sign");
    assert!(matches!(
        f.ledger.record_charge(&stranger, 1),
        Err(LedgerError::UnknownChannel(_))
    ));
    assert!(f.ledger.balance(&f.channel).expect("balance").is_none());
}

#[test]
fn policy_enqueues_by_amount_or_age_and_supersedes_unconfirmed_rows() {
    let mut f = fixture();
    let policy = SettlementPolicy {
        min_amount: 1000,
        max_age: Duration::from_secs(60),
    };
    f.ledger
        .record_charge(&f.charge(1, 400), 100)
        .expect("record");
    assert!(
        f.ledger
            .enqueue_due(&policy, 120)
            .expect("enqueue")
            .is_empty(),
        "below amount, young"
    );
    let by_age = f.ledger.enqueue_due(&policy, 160).expect("enqueue");
    assert_eq!(by_age.len(), 1, "old enough");
    assert_eq!((by_age[0].seqno, by_age[0].cumulative), (1, 400));
    assert!(
        f.ledger
            .enqueue_due(&policy, 161)
            .expect("enqueue")
            .is_empty(),
        "nothing new"
    );

    f.ledger
        .record_charge(&f.charge(2, 900), 170)
        .expect("record");
    assert!(
        f.ledger
            .enqueue_due(&policy, 171)
            .expect("enqueue")
            .is_empty(),
        "500 unsettled"
    );
    f.ledger
        .record_charge(&f.charge(3, 1400), 172)
        .expect("record");
    let by_amount = f.ledger.enqueue_due(&policy, 173).expect("enqueue");
    assert_eq!((by_amount[0].seqno, by_amount[0].cumulative), (3, 1400));
    assert_eq!(
        f.ledger
            .outbox_count(OutboxState::Superseded)
            .expect("count"),
        1
    );
    let open = f.ledger.open_outbox().expect("open");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, OutboxState::Pending);

    f.ledger.mark_sent(open[0].id).expect("sent");
    assert_eq!(
        f.ledger.open_outbox().expect("open")[0].state,
        OutboxState::Sent
    );
    f.ledger
        .confirm(open[0].id, &open[0].channel, 1400)
        .expect("confirm");
    assert!(f.ledger.open_outbox().expect("open").is_empty());
    assert_eq!(
        f.ledger
            .balance(&f.channel)
            .expect("b")
            .expect("p")
            .confirmed,
        1400
    );
}

#[test]
fn outbox_bytes_are_an_external_settle_of_the_latest_charge() {
    let mut f = fixture();
    let policy = SettlementPolicy {
        min_amount: 1,
        max_age: Duration::from_secs(0),
    };
    let c = f.charge(5, 777);
    f.ledger.record_charge(&c, 1).expect("record");
    let row = f.ledger.enqueue_due(&policy, 2).expect("enqueue").remove(0);
    let body = chrysalis_protocol::ton::settle_body(5, &c).expect("body");
    let expected = chrysalis_protocol::ton::external_message(&f.channel, &body).expect("ext");
    assert_eq!(
        row.boc,
        chrysalis_protocol::ton::to_boc(&expected).expect("boc")
    );
}

#[test]
fn latest_signed_is_the_newest_charge_for_the_enclave_to_resume_from() {
    let mut f = fixture();
    assert_eq!(f.ledger.latest_signed(&f.channel).expect("query"), None);
    for seqno in 1..=3 {
        let signed = f.charge(seqno, u128::from(seqno) * 100);
        f.ledger.record_charge(&signed, 1).expect("record");
    }
    let boc = f
        .ledger
        .latest_signed(&f.channel)
        .expect("query")
        .expect("a charge");
    let back = SignedCharge::from_boc(&boc).expect("parse");
    assert_eq!(back, f.charge(3, 300));
}
