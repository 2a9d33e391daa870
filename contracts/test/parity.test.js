// Byte parity: every cell the Rust side (protocol/src/ton.rs) built is rebuilt here
// with @ton/core and compared byte for byte; then the Rust-built wallet v5r1 transfer
// deploys the channel and the Rust-signed external settle runs in the emulator.
// Input: $CHRYSALIS_RUST_CELLS (written by `cargo test -p chrysalis-protocol --test
// ton_parity`) or the committed test/fixtures/rust-cells.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Address, Cell, beginCell, external, internal, storeMessage, storeMessageRelaxed } from '@ton/core';
import { keyPairFromSeed } from '@ton/crypto';
import { Blockchain } from '@ton/sandbox';
import * as ch from '../lib/channel.js';
import { channelCode, valueSent } from './fixture.js';

const path = process.env.CHRYSALIS_RUST_CELLS ?? new URL('./fixtures/rust-cells.json', import.meta.url);
const rust = JSON.parse(readFileSync(path, 'utf-8'));
const inp = rust.inputs;
const boc = (name) => Buffer.from(rust.cells[name], 'hex');
const toHex = (cell) => cell.toBoc().toString('hex');
const enclave = keyPairFromSeed(Buffer.from(inp.enclaveSeed, 'hex'));

async function jsScenario() {
  const code = await channelCode();
  const cfg = {
    client: Address.parse(inp.client),
    provider: Address.parse(inp.provider),
    enclaveKey: enclave.publicKey,
    channelId: BigInt(inp.channelId),
    closeDelay: inp.closeDelay,
    minStake: BigInt(inp.minStake),
  };
  const { init, address } = ch.channelInit(code, cfg);
  const c = inp.charge;
  const chargeFields = {
    channel: address, channelId: cfg.channelId, seqno: BigInt(c.seqno), cumulative: BigInt(c.cumulative),
    promptTokens: BigInt(c.promptTokens), completionTokens: BigInt(c.completionTokens), final: false,
  };
  const charge = ch.chargePayloadCell(chargeFields);
  const signature = ch.signCharge(charge, enclave.secretKey);
  const finalCharge = ch.chargePayloadCell({ ...chargeFields, seqno: chargeFields.seqno + 1n, final: true });
  const settle = ch.settleBody(9n, signature, charge);
  const topUp = ch.topUpBody(1n, BigInt(inp.deposit));
  const withdraw = ch.withdrawBody(2n, 500_000_000n);
  const deploy = internal({ to: address, value: BigInt(inp.deposit) + 50_000_000n, bounce: false, init, body: topUp });
  const withdrawMsg = internal({ to: address, value: 50_000_000n, bounce: true, body: withdraw });
  return {
    address, cfg, signature,
    cells: {
      config: ch.configCell(cfg),
      initialData: ch.initialDataCell(cfg),
      charge,
      signedCharge: beginCell().storeBuffer(signature, 64).storeRef(charge).endCell(),
      topUp,
      settle,
      withdraw,
      requestClose: ch.opOnlyBody(ch.Op.requestClose, 3n),
      finishClose: ch.opOnlyBody(ch.Op.finishClose, 4n),
      cooperativeClose: ch.cooperativeCloseBody(5n, ch.signCharge(finalCharge, enclave.secretKey), finalCharge),
      externalSettle: beginCell().store(storeMessage(external({ to: address, body: settle }))).endCell(),
      deployMessage: beginCell().store(storeMessageRelaxed(deploy)).endCell(),
      withdrawMessage: beginCell().store(storeMessageRelaxed(withdrawMsg)).endCell(),
    },
  };
}

test('Rust cells equal @ton/core cells byte for byte', async () => {
  const js = await jsScenario();
  assert.ok(js.address.equals(Address.parse(rust.channelAddress)), 'channel address');
  assert.equal(rust.signature, js.signature.toString('hex'), 'Ed25519 over the charge hash');
  for (const [name, cell] of Object.entries(js.cells)) {
    assert.equal(rust.cells[name], toHex(cell), `cell ${name}`);
  }
});

test('Rust wallet v5r1 transfer deploys the channel; Rust external settle pays exactly', async () => {
  const blockchain = await Blockchain.create();
  blockchain.now = inp.validUntil - 600;
  const funder = await blockchain.treasury('funder');
  const wallet = Address.parse(rust.walletAddress);
  const channel = Address.parse(rust.channelAddress);
  await funder.send({ to: wallet, value: BigInt(inp.deposit) + 1_000_000_000n, bounce: false });

  const deployed = await blockchain.sendMessage(Cell.fromBoc(boc('walletDeployTransfer'))[0]);
  const channelTx = deployed.transactions.find((t) => t.inMessage?.info.dest?.equals?.(channel));
  assert.ok(channelTx, 'the wallet sent the deploy message to the channel');
  assert.equal(channelTx.description.computePhase.exitCode, 0);
  const state = ch.readState((await blockchain.runGetMethod(channel, 'channel_state')).stackReader);
  assert.equal(state.deposited, BigInt(inp.deposit));

  const settled = await blockchain.sendMessage(Cell.fromBoc(boc('externalSettle'))[0]);
  assert.equal(valueSent(settled, channel, Address.parse(inp.provider)), BigInt(inp.charge.cumulative));
  const after = ch.readState((await blockchain.runGetMethod(channel, 'channel_state')).stackReader);
  assert.equal(after.paid, BigInt(inp.charge.cumulative));
  assert.equal(after.seqno, BigInt(inp.charge.seqno));
  await assert.rejects(blockchain.sendMessage(Cell.fromBoc(boc('externalSettle'))[0]), /not accepted/i);
});
