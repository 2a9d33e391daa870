// Compiles src/channel.tolk with @ton/tolk-js and returns the code cell.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { runTolkCompiler } from '@ton/tolk-js';
import { Cell } from '@ton/core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Compiles the channel contract; throws with the compiler's message on error. */
export async function compileChannel() {
  const result = await runTolkCompiler({
    entrypointFileName: 'channel.tolk',
    fsReadCallback: (path) => readFileSync(join(root, 'src', path), 'utf-8'),
  });
  if (result.status === 'error') {
    throw new Error(`tolk: ${result.message}`);
  }
  return { code: Cell.fromBoc(Buffer.from(result.codeBoc64, 'base64'))[0], fift: result.fiftCode };
}
