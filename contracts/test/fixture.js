// A fresh sandbox with one deployed, funded channel, shared by the contract tests.
import { Blockchain, internal } from '@ton/sandbox';
import { toNano } from '@ton/core';
import { keyPairFromSeed } from '@ton/crypto';
import { compileChannel } from '../scripts/compile.js';
import * as ch from '../lib/channel.js';

let compiled;

/** Compiles once per test process. */
export async function channelCode() {
  compiled ??= (await compileChannel()).code;
  return compiled;
}

/** Deterministic enclave key pair (tests only). */
export function enclaveKeys(seedByte = 7) {
  return keyPairFromSeed(Buffer.alloc(32, seedByte));
}

/**
 * Starts a sandbox, deploys a channel with `deposit` and returns handles to it.
 * `config` overrides fields of the channel configuration.
 */
export async function deployedChannel({ deposit = toNano('10'), config = {} } = {}) {
  const blockchain = await Blockchain.create();
  blockchain.now = 1_800_000_000;
  const client = await blockchain.treasury('client');
  const provider = await blockchain.treasury('provider');
  const stranger = await blockchain.treasury('stranger');
  const keys = enclaveKeys();
  const cfg = {
    client: client.address,
    provider: provider.address,
    enclaveKey: keys.publicKey,
    channelId: 42n,
    closeDelay: 3600,
    minStake: toNano('1'),
    ...config,
  };
  const code = await channelCode();
  const { init, address } = ch.channelInit(code, cfg);
  const deployed = await client.send({
    to: address,
    value: deposit + toNano('0.05'),
    init,
    body: ch.topUpBody(0n, deposit),
  });
  const channel = {
    address,
    async state() {
      const res = await blockchain.runGetMethod(address, 'channel_state');
      return ch.readState(res.stackReader);
    },
    async balance() {
      return (await blockchain.getContract(address)).balance;
    },
    /** Signs and wraps a charge for this channel. */
    charge(fields, secretKey = keys.secretKey) {
      const payload = ch.chargePayloadCell({
        channel: address,
        channelId: cfg.channelId,
        seqno: 1n,
        promptTokens: 0n,
        completionTokens: 0n,
        final: false,
        ...fields,
      });
      return { payload, signature: ch.signCharge(payload, secretKey) };
    },
  };
  return { blockchain, client, provider, stranger, keys, cfg, channel, deployed, code };
}

/** The compute-phase exit code of the transaction on `address` in a send result. */
export function exitCodeAt(result, address) {
  const tx = result.transactions.find((t) => t.inMessage?.info.dest?.equals?.(address));
  if (!tx) throw new Error(`no transaction on ${address}`);
  const d = tx.description;
  if (d.type !== 'generic' || d.computePhase.type !== 'vm') return null;
  return d.computePhase.exitCode;
}

/** Sends `body` with `value` from `sender` to the channel. */
export function send(sender, channel, body, value = toNano('0.05')) {
  return sender.send({ to: channel.address, value, body });
}

export { internal, toNano, ch };

/** Sum of the values the channel sent to `to` in a send result (exact, before the receiver's fees). */
export function valueSent(result, from, to) {
  let total = 0n;
  for (const t of result.transactions) {
    const info = t.inMessage?.info;
    if (info?.type === 'internal' && info.src.equals(from) && info.dest.equals(to)) total += info.value.coins;
  }
  return total;
}
