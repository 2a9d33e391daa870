// The channel contract in the TON emulator (real TVM): every message, every exit code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deployedChannel, exitCodeAt, send, toNano, ch, enclaveKeys, valueSent } from './fixture.js';
import { beginCell, Address, external } from '@ton/core';

const { Exit, Op, State } = ch;

test('deploy with a top-up records the deposit', async () => {
  const { channel, deployed } = await deployedChannel({ deposit: toNano('10') });
  assert.equal(exitCodeAt(deployed, channel.address), 0);
  const s = await channel.state();
  assert.equal(s.deposited, toNano('10'));
  assert.equal(s.paid, 0n);
  assert.equal(s.state, State.open);
});

test('getter channel_config returns the deployed configuration', async () => {
  const { blockchain, channel, cfg } = await deployedChannel();
  const r = (await blockchain.runGetMethod(channel.address, 'channel_config')).stackReader;
  assert.ok(r.readAddress().equals(cfg.client));
  assert.ok(r.readAddress().equals(cfg.provider));
  assert.equal(r.readBigNumber(), BigInt('0x' + cfg.enclaveKey.toString('hex')));
  assert.equal(r.readBigNumber(), cfg.channelId);
  assert.equal(r.readNumber(), cfg.closeDelay);
  assert.equal(r.readBigNumber(), cfg.minStake);
});

test('top up adds the declared amount; too little value is refused', async () => {
  const { client, stranger, channel } = await deployedChannel({ deposit: toNano('10') });
  const ok = await send(stranger, channel, ch.topUpBody(1n, toNano('2')), toNano('2.02'));
  assert.equal(exitCodeAt(ok, channel.address), 0);
  assert.equal((await channel.state()).deposited, toNano('12'));
  const short = await send(client, channel, ch.topUpBody(2n, toNano('2')), toNano('2'));
  assert.equal(exitCodeAt(short, channel.address), Exit.tooLittleValue);
  assert.equal((await channel.state()).deposited, toNano('12'));
});

test('settle pays the provider exactly the difference, from anyone', async () => {
  const { stranger, provider, channel } = await deployedChannel();
  const c1 = channel.charge({ seqno: 1n, cumulative: toNano('1.5'), promptTokens: 10n, completionTokens: 20n });
  const r1 = await send(stranger, channel, ch.settleBody(1n, c1.signature, c1.payload));
  assert.equal(exitCodeAt(r1, channel.address), 0);
  assert.equal(valueSent(r1, channel.address, provider.address), toNano('1.5'));
  const c2 = channel.charge({ seqno: 2n, cumulative: toNano('2') });
  const r2 = await send(stranger, channel, ch.settleBody(2n, c2.signature, c2.payload));
  assert.equal(exitCodeAt(r2, channel.address), 0);
  assert.equal(valueSent(r2, channel.address, provider.address), toNano('0.5'));
  const s = await channel.state();
  assert.equal(s.paid, toNano('2'));
  assert.equal(s.seqno, 2n);
});

test('settle rejects a bad signature, a wrong channel, a replay and an overdraft', async () => {
  const { stranger, channel, cfg } = await deployedChannel({ deposit: toNano('10') });
  const wrongKey = enclaveKeys(9);
  const forged = channel.charge({ cumulative: toNano('1') }, wrongKey.secretKey);
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(1n, forged.signature, forged.payload)), channel.address), Exit.badSignature);

  const otherAddr = channel.charge({ cumulative: toNano('1'), channel: Address.parse('EQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAM9c') });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(1n, otherAddr.signature, otherAddr.payload)), channel.address), Exit.wrongChannel);
  const otherId = channel.charge({ cumulative: toNano('1'), channelId: cfg.channelId + 1n });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(1n, otherId.signature, otherId.payload)), channel.address), Exit.wrongChannel);

  const tooMuch = channel.charge({ cumulative: toNano('10') + 1n });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(1n, tooMuch.signature, tooMuch.payload)), channel.address), Exit.chargeAboveDeposit);

  const good = channel.charge({ cumulative: toNano('3') });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(1n, good.signature, good.payload)), channel.address), 0);
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(2n, good.signature, good.payload)), channel.address), Exit.nonIncreasingCharge);
  const lower = channel.charge({ seqno: 3n, cumulative: toNano('2') });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(3n, lower.signature, lower.payload)), channel.address), Exit.nonIncreasingCharge);

  const broke = channel.charge({ seqno: 4n, cumulative: toNano('4') });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.settleBody(4n, broke.signature, broke.payload), toNano('0.001')), channel.address), Exit.tooLittleValue);
  assert.equal((await channel.state()).paid, toNano('3'));
});

test('a signed charge travels as an external message, applied once', async () => {
  const { blockchain, provider, channel } = await deployedChannel();
  const c = channel.charge({ cumulative: toNano('0.7') });
  const msg = external({ to: channel.address, body: ch.settleBody(5n, c.signature, c.payload) });
  const r = await blockchain.sendMessage(msg);
  assert.equal(valueSent(r, channel.address, provider.address), toNano('0.7'));
  await assert.rejects(blockchain.sendMessage(msg), /not accepted/i);
  const forged = channel.charge({ cumulative: toNano('0.9') }, enclaveKeys(3).secretKey);
  await assert.rejects(blockchain.sendMessage(external({ to: channel.address, body: ch.settleBody(6n, forged.signature, forged.payload) })), /not accepted/i);
  assert.equal((await channel.state()).paid, toNano('0.7'));
});

test('withdraw: only the client, only above paid plus stake', async () => {
  const { client, stranger, channel, provider } = await deployedChannel({ deposit: toNano('10') });
  const c = channel.charge({ cumulative: toNano('2') });
  await send(provider, channel, ch.settleBody(1n, c.signature, c.payload));
  assert.equal(exitCodeAt(await send(stranger, channel, ch.withdrawBody(1n, toNano('1'))), channel.address), Exit.notClient);
  // free = 10 - 2 paid - 1 stake = 7
  assert.equal(exitCodeAt(await send(client, channel, ch.withdrawBody(1n, toNano('7') + 1n)), channel.address), Exit.aboveFreeBalance);
  assert.equal(exitCodeAt(await send(client, channel, ch.withdrawBody(1n, toNano('1')), toNano('0.001')), channel.address), Exit.tooLittleValue);
  const before = await client.getBalance();
  const ok = await send(client, channel, ch.withdrawBody(2n, toNano('7')));
  assert.equal(exitCodeAt(ok, channel.address), 0);
  const gained = (await client.getBalance()) - before;
  assert.ok(gained > toNano('6.9') && gained < toNano('7'), `client gained ${gained}`);
  assert.equal((await channel.state()).deposited, toNano('3'));
});

test('request close, settle during the delay, finish close refunds the rest', async () => {
  const { blockchain, client, stranger, provider, channel } = await deployedChannel({ deposit: toNano('10') });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.opOnlyBody(Op.requestClose, 1n)), channel.address), Exit.notClient);
  assert.equal(exitCodeAt(await send(stranger, channel, ch.opOnlyBody(Op.finishClose, 1n)), channel.address), Exit.notClosing);
  assert.equal(exitCodeAt(await send(client, channel, ch.opOnlyBody(Op.requestClose, 1n)), channel.address), 0);
  const s = await channel.state();
  assert.equal(s.state, State.closing);
  assert.equal(s.closeAt, blockchain.now + 3600);
  assert.equal(exitCodeAt(await send(client, channel, ch.opOnlyBody(Op.requestClose, 2n)), channel.address), Exit.closed);
  assert.equal(exitCodeAt(await send(client, channel, ch.topUpBody(2n, 1n), toNano('1')), channel.address), Exit.closed);
  assert.equal(exitCodeAt(await send(client, channel, ch.withdrawBody(2n, 1n)), channel.address), Exit.closed);

  const c = channel.charge({ cumulative: toNano('4') });
  assert.equal(exitCodeAt(await send(provider, channel, ch.settleBody(1n, c.signature, c.payload)), channel.address), 0);
  assert.equal(exitCodeAt(await send(stranger, channel, ch.opOnlyBody(Op.finishClose, 2n)), channel.address), Exit.stillLocked);

  blockchain.now += 3600;
  const before = await client.getBalance();
  assert.equal(exitCodeAt(await send(stranger, channel, ch.opOnlyBody(Op.finishClose, 3n)), channel.address), 0);
  const refund = (await client.getBalance()) - before;
  assert.ok(refund >= toNano('6'), `refund ${refund}`);
  assert.equal((await channel.state()).state, State.closed);
  assert.equal(await channel.balance(), 0n);
  const late = channel.charge({ seqno: 2n, cumulative: toNano('5') });
  assert.equal(exitCodeAt(await send(provider, channel, ch.settleBody(2n, late.signature, late.payload)), channel.address), Exit.closed);
  assert.equal(exitCodeAt(await send(stranger, channel, ch.opOnlyBody(Op.finishClose, 4n)), channel.address), Exit.closed);
});

test('cooperative close: final charge from the client pays and refunds at once', async () => {
  const { client, stranger, provider, channel } = await deployedChannel({ deposit: toNano('10') });
  const notFinal = channel.charge({ cumulative: toNano('3') });
  assert.equal(exitCodeAt(await send(client, channel, ch.cooperativeCloseBody(1n, notFinal.signature, notFinal.payload)), channel.address), Exit.notFinal);
  const fin = channel.charge({ seqno: 9n, cumulative: toNano('3'), final: true });
  assert.equal(exitCodeAt(await send(stranger, channel, ch.cooperativeCloseBody(1n, fin.signature, fin.payload)), channel.address), Exit.notClient);
  const forged = channel.charge({ cumulative: toNano('1'), final: true }, enclaveKeys(4).secretKey);
  assert.equal(exitCodeAt(await send(client, channel, ch.cooperativeCloseBody(1n, forged.signature, forged.payload)), channel.address), Exit.badSignature);

  const r = await send(client, channel, ch.cooperativeCloseBody(2n, fin.signature, fin.payload));
  assert.equal(exitCodeAt(r, channel.address), 0);
  assert.equal(valueSent(r, channel.address, provider.address), toNano('3'));
  assert.ok(valueSent(r, channel.address, client.address) > toNano('7'));
  const s = await channel.state();
  assert.equal(s.state, State.closed);
  assert.equal(s.paid, toNano('3'));
  assert.equal(exitCodeAt(await send(client, channel, ch.cooperativeCloseBody(3n, fin.signature, fin.payload)), channel.address), Exit.closed);
});

test('cooperative close refuses a final charge below what was paid', async () => {
  const { client, provider, channel } = await deployedChannel({ deposit: toNano('10') });
  const c = channel.charge({ seqno: 1n, cumulative: toNano('3') });
  await send(provider, channel, ch.settleBody(1n, c.signature, c.payload));
  const low = channel.charge({ seqno: 2n, cumulative: toNano('2'), final: true });
  assert.equal(exitCodeAt(await send(client, channel, ch.cooperativeCloseBody(1n, low.signature, low.payload)), channel.address), Exit.nonIncreasingCharge);
});

test('unknown opcodes are refused; empty transfers feed the gas reserve', async () => {
  const { stranger, channel } = await deployedChannel();
  const bad = beginCell().storeUint(0xdeadbeef, 32).storeUint(0, 64).endCell();
  assert.equal(exitCodeAt(await send(stranger, channel, bad), channel.address), Exit.unknownOp);
  const before = await channel.balance();
  assert.equal(exitCodeAt(await stranger.send({ to: channel.address, value: toNano('1') }), channel.address), 0);
  assert.ok((await channel.balance()) > before);
  assert.equal((await channel.state()).deposited, toNano('10'));
});

test('build/channel.code.boc is the current compile of src/channel.tolk', async () => {
  const { readFileSync } = await import('node:fs');
  const { Cell } = await import('@ton/core');
  const { channelCode } = await import('./fixture.js');
  const committed = Cell.fromBoc(readFileSync(new URL('../build/channel.code.boc', import.meta.url)))[0];
  assert.equal(committed.hash().toString('hex'), (await channelCode()).hash().toString('hex'), 'run `npm run build` in contracts/');
});
