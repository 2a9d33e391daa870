// Writes build/channel.code.boc, the compiled contract the Rust side embeds.
import { writeFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { compileChannel } from './compile.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { code } = await compileChannel();
mkdirSync(join(root, 'build'), { recursive: true });
writeFileSync(join(root, 'build', 'channel.code.boc'), code.toBoc());
console.log(`build/channel.code.boc: code hash ${code.hash().toString('hex')}`);
