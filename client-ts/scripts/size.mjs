// Prints a bundle's size minified and gzipped: node scripts/size.mjs build/logger.min.js
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const file = process.argv[2];
const bytes = readFileSync(file);
const gz = gzipSync(bytes, { level: 9 }).length;
console.log(`${file}: ${bytes.length} bytes minified, ${gz} bytes gzipped`);
