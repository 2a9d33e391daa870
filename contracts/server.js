#!/usr/bin/env node
// A local TON endpoint: @ton/sandbox (the TON emulator, real TVM) behind a
// toncenter-style HTTP API, for tests and `cargo xtask demo --billing`.
//
//   POST /api/v2/sendBoc            {"boc": base64}                      -> {"ok":true,"result":{"@type":"ok","hash":hex}}
//   POST /api/v2/runGetMethod       {"address","method","stack":[]}      -> {"ok":true,"result":{"exit_code","stack":[["num","0x.."],..]}}
//   GET  /api/v2/getAddressBalance?address=A                              -> {"ok":true,"result":"nanotons"}
// Local-only helpers (not in toncenter):
//   POST /local/fund   {"address","amount"}  send nanotons from a rich treasury (non-bounceable)
//   POST /local/time   {"advance": seconds} | {"now": unix}  move the emulator clock
//   GET  /local/status                        clock, transaction count
//
// State lives in memory: restart the server and the chain starts over.
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { Blockchain } from '@ton/sandbox';
import { Address, Cell, TupleBuilder } from '@ton/core';

const MAX_BODY = 1 << 20;

/** Renders a get-method stack entry as toncenter does. */
function stackEntry(item) {
  switch (item.type) {
    case 'int': return ['num', item.value < 0n ? '-0x' + (-item.value).toString(16) : '0x' + item.value.toString(16)];
    case 'null': return ['null'];
    case 'cell': return ['cell', { bytes: item.cell.toBoc().toString('base64') }];
    case 'slice': return ['slice', { bytes: item.cell.toBoc().toString('base64') }];
    case 'builder': return ['builder', { bytes: item.cell.toBoc().toString('base64') }];
    case 'tuple': return ['tuple', { elements: item.items.map(stackEntry) }];
    default: return ['unknown', String(item.type)];
  }
}

/** Parses a toncenter-style input stack (`[["num", "0x.."], ...]`). */
function inputStack(stack = []) {
  const t = new TupleBuilder();
  for (const [kind, value] of stack) {
    if (kind === 'num') t.writeNumber(BigInt(value));
    else if (kind === 'cell') t.writeCell(Cell.fromBase64(value.bytes ?? value));
    else if (kind === 'slice') t.writeSlice(Cell.fromBase64(value.bytes ?? value));
    else throw new Error(`unsupported stack entry type ${kind}, expected num, cell or slice`);
  }
  return t.build();
}

async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error(`request body above ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf-8')) : {};
}

/** The handlers, over one emulator instance. */
export async function createEndpoint({ now } = {}) {
  const blockchain = await Blockchain.create();
  if (now !== undefined) blockchain.now = now;
  const treasury = await blockchain.treasury('local-endpoint-faucet', { balance: 10n ** 18n });
  let txCount = 0;

  const routes = {
    'POST /api/v2/sendBoc': async (body) => {
      const cell = Cell.fromBase64(body.boc);
      const result = await blockchain.sendMessage(cell);
      txCount += result.transactions.length;
      const failed = result.transactions
        .map((t) => ({ t, d: t.description }))
        .filter(({ d }) => d.type === 'generic' && d.computePhase.type === 'vm' && d.computePhase.exitCode !== 0 && d.computePhase.exitCode !== 1)
        .map(({ t, d }) => ({ account: t.inMessage?.info.dest?.toString(), exit_code: d.computePhase.exitCode }));
      return { '@type': 'ok', hash: cell.hash().toString('hex'), transactions: result.transactions.length, failed };
    },
    'POST /api/v2/runGetMethod': async (body) => {
      const res = await blockchain.runGetMethod(Address.parse(body.address), body.method, inputStack(body.stack));
      return { '@type': 'smc.runResult', gas_used: Number(res.gasUsed), exit_code: res.exitCode, stack: res.stack.map(stackEntry) };
    },
    'GET /api/v2/getAddressBalance': async (_body, query) => {
      const contract = await blockchain.getContract(Address.parse(query.get('address')));
      return contract.balance.toString();
    },
    'POST /local/fund': async (body) => {
      const result = await treasury.send({ to: Address.parse(body.address), value: BigInt(body.amount), bounce: false });
      txCount += result.transactions.length;
      return { funded: String(body.amount) };
    },
    'POST /local/time': async (body) => {
      const current = blockchain.now ?? Math.floor(Date.now() / 1000);
      blockchain.now = body.now !== undefined ? Number(body.now) : current + Number(body.advance ?? 0);
      return { now: blockchain.now };
    },
    'GET /local/status': async () => ({ now: blockchain.now ?? null, transactions: txCount }),
  };

  return async function handle(req, res) {
    const url = new URL(req.url, 'http://local');
    const route = routes[`${req.method} ${url.pathname}`];
    const reply = (status, payload) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(payload));
    };
    if (!route) return reply(404, { ok: false, error: `no route ${req.method} ${url.pathname}`, code: 404 });
    try {
      const body = req.method === 'POST' ? await readJson(req) : {};
      reply(200, { ok: true, result: await route(body, url.searchParams) });
    } catch (err) {
      // toncenter answers rejected messages with ok:false and an error text.
      reply(500, { ok: false, error: String(err?.message ?? err), code: 500 });
    }
  };
}

/** Starts the HTTP server; resolves with its base URL. */
export async function startServer({ host = '127.0.0.1', port = 0, now } = {}) {
  const handle = await createEndpoint({ now });
  const server = createServer((req, res) => { handle(req, res); });
  await new Promise((resolve) => server.listen(port, host, resolve));
  const addr = server.address();
  return { server, url: `http://${addr.address}:${addr.port}` };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      now: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(`usage: node server.js [--host 127.0.0.1] [--port 0] [--now UNIX]

Serves the TON emulator (@ton/sandbox) behind toncenter's v2 HTTP API:
sendBoc, runGetMethod, getAddressBalance, plus /local/fund, /local/time and
/local/status for tests and demos. Port 0 picks a free port. The first stdout line
is JSON: {"url": "http://HOST:PORT"}. State is in memory only.`);
    process.exit(0);
  }
  const { url } = await startServer({ host: values.host, port: Number(values.port), now: values.now === undefined ? undefined : Number(values.now) });
  console.log(JSON.stringify({ url }));
}
