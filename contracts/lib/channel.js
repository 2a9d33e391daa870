// Cell builders for the Chrysalis channel, written with @ton/core. The Rust builders
// in protocol/src/ton.rs must produce the same bytes (test/parity.test.js checks).
import { beginCell, Cell, contractAddress, Address } from '@ton/core';
import { sign } from '@ton/crypto';

/** Message opcodes (32-bit tags), as in src/channel.tolk. */
export const Op = {
  topUp: 0x1c0a0001,
  settle: 0x1c0a0002,
  withdraw: 0x1c0a0003,
  requestClose: 0x1c0a0004,
  finishClose: 0x1c0a0005,
  cooperativeClose: 0x1c0a0006,
};

/** Tag of the signed charge payload. */
export const CHARGE_TAG = 0x1c0a00c4;

/** Exit codes of the contract. */
export const Exit = {
  badSignature: 101,
  wrongChannel: 102,
  nonIncreasingCharge: 103,
  chargeAboveDeposit: 104,
  notClient: 105,
  closed: 106,
  stillLocked: 107,
  tooLittleValue: 108,
  aboveFreeBalance: 109,
  notFinal: 110,
  notClosing: 111,
  unknownOp: 0xffff,
};

/** Channel states as the getter reports them. */
export const State = { open: 0, closing: 1, closed: 2 };

/** The fixed configuration cell. */
export function configCell(c) {
  return beginCell()
    .storeAddress(c.client)
    .storeAddress(c.provider)
    .storeBuffer(c.enclaveKey, 32)
    .storeUint(c.channelId, 64)
    .storeUint(c.closeDelay, 32)
    .storeCoins(c.minStake)
    .endCell();
}

/** The initial data cell: nothing deposited, nothing paid, open. */
export function initialDataCell(c) {
  return beginCell()
    .storeRef(configCell(c))
    .storeCoins(0n)
    .storeCoins(0n)
    .storeUint(0, 64)
    .storeUint(0, 2)
    .storeUint(0, 32)
    .endCell();
}

/** The state init and address of a channel with this configuration. */
export function channelInit(code, c, workchain = 0) {
  const init = { code, data: initialDataCell(c) };
  return { init, address: contractAddress(workchain, init) };
}

/** The charge payload the enclave signs. */
export function chargePayloadCell(ch) {
  return beginCell()
    .storeUint(CHARGE_TAG, 32)
    .storeAddress(ch.channel)
    .storeUint(ch.channelId, 64)
    .storeUint(ch.seqno, 64)
    .storeCoins(ch.cumulative)
    .storeUint(ch.promptTokens, 64)
    .storeUint(ch.completionTokens, 64)
    .storeBit(ch.final)
    .endCell();
}

/** Ed25519 over the payload cell's representation hash. */
export function signCharge(payload, secretKey) {
  return sign(payload.hash(), secretKey);
}

function signedBody(op, queryId, signature, payload) {
  return beginCell().storeUint(op, 32).storeUint(queryId, 64).storeBuffer(signature, 64).storeRef(payload).endCell();
}

/** settle#1c0a0002: submits a signed cumulative charge. */
export function settleBody(queryId, signature, payload) {
  return signedBody(Op.settle, queryId, signature, payload);
}

/** cooperative_close#1c0a0006: final signed charge, sent by the client. */
export function cooperativeCloseBody(queryId, signature, payload) {
  return signedBody(Op.cooperativeClose, queryId, signature, payload);
}

/** top_up#1c0a0001 */
export function topUpBody(queryId, amount) {
  return beginCell().storeUint(Op.topUp, 32).storeUint(queryId, 64).storeCoins(amount).endCell();
}

/** withdraw#1c0a0003 */
export function withdrawBody(queryId, amount) {
  return beginCell().storeUint(Op.withdraw, 32).storeUint(queryId, 64).storeCoins(amount).endCell();
}

/** request_close#1c0a0004 and finish_close#1c0a0005 */
export function opOnlyBody(op, queryId) {
  return beginCell().storeUint(op, 32).storeUint(queryId, 64).endCell();
}

/** Parses the `channel_state` getter's stack. */
export function readState(stack) {
  return {
    deposited: stack.readBigNumber(),
    paid: stack.readBigNumber(),
    seqno: stack.readBigNumber(),
    state: stack.readNumber(),
    closeAt: stack.readNumber(),
  };
}

export { Cell, Address };
