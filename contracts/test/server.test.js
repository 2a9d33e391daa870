// The local toncenter-style endpoint: deploy, top up and settle through HTTP only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Address } from '@ton/core';
import { startServer } from '../server.js';

const rust = JSON.parse(readFileSync(new URL('./fixtures/rust-cells.json', import.meta.url), 'utf-8'));

async function call(url, method, path, body) {
  const res = await fetch(url + path, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return res.json();
}
const b64 = (name) => Buffer.from(rust.cells[name], 'hex').toString('base64');

test('sendBoc, runGetMethod and getAddressBalance drive a channel over HTTP', async () => {
  const { server, url } = await startServer({ now: rust.inputs.validUntil - 600 });
  try {
    const wallet = Address.parse(rust.walletAddress).toString();
    const channel = Address.parse(rust.channelAddress).toString();
    assert.equal((await call(url, 'POST', '/local/fund', { address: wallet, amount: '20000000000' })).ok, true);
    const bal = await call(url, 'GET', `/api/v2/getAddressBalance?address=${encodeURIComponent(wallet)}`);
    assert.equal(bal.result, '20000000000');

    const deployed = await call(url, 'POST', '/api/v2/sendBoc', { boc: b64('walletDeployTransfer') });
    assert.equal(deployed.ok, true, JSON.stringify(deployed));
    assert.deepEqual(deployed.result.failed, []);

    const st = await call(url, 'POST', '/api/v2/runGetMethod', { address: channel, method: 'channel_state', stack: [] });
    assert.equal(st.result.exit_code, 0);
    assert.equal(BigInt(st.result.stack[0][1]), BigInt(rust.inputs.deposit));

    const settled = await call(url, 'POST', '/api/v2/sendBoc', { boc: b64('externalSettle') });
    assert.equal(settled.ok, true);
    const provider = Address.parse(rust.inputs.provider).toString();
    const paid = await call(url, 'GET', `/api/v2/getAddressBalance?address=${encodeURIComponent(provider)}`);
    assert.equal(paid.result, rust.inputs.charge.cumulative);

    const replay = await call(url, 'POST', '/api/v2/sendBoc', { boc: b64('externalSettle') });
    assert.equal(replay.ok, false);
    assert.match(replay.error, /not accepted/i);

    const t = await call(url, 'POST', '/local/time', { advance: 60 });
    assert.equal(t.result.now, rust.inputs.validUntil - 540);
    assert.equal((await call(url, 'GET', '/nope')).ok, false);
  } finally {
    server.close();
  }
});
