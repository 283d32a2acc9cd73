'use strict';
// Compare what kv_reader.js reads from a KV file with a golden JSON written by Python.
//
//   node kv_reader_check.js <items.kv> <golden.json>
//   node kv_reader_check.js <items.kv> --expect-error <substring>
//
// golden.json: {dim, count, dtype, model_hash, run_id, ids: [decimal strings, sorted],
//               vectors: [[float32 values as numbers], ...] in id order, missing: [decimal strings]}
// Prints "OK ..." and exits 0 when everything matches bit for bit; otherwise exits 1.

const fs = require('fs');
const path = require('path');
const { readKv } = require(path.join(__dirname, 'kv_reader.js'));

function check(condition, message) {
  if (!condition) {
    process.stderr.write(`MISMATCH: ${message}\n`);
    process.exit(1);
  }
}

const [file, second, third] = process.argv.slice(2);
if (second === '--expect-error') {
  try {
    readKv(file);
  } catch (error) {
    check(error.message.includes(third), `error "${error.message}" does not mention "${third}"`);
    process.stdout.write(`OK error: ${error.message}\n`);
    process.exit(0);
  }
  check(false, `reading ${file} succeeded, expected an error mentioning "${third}"`);
}

const golden = JSON.parse(fs.readFileSync(second, 'utf8'));
const kv = readKv(file);
check(kv.dim === golden.dim, `dim ${kv.dim} != ${golden.dim}`);
check(kv.count === golden.count, `count ${kv.count} != ${golden.count}`);
check(kv.dtype === golden.dtype, `dtype ${kv.dtype} != ${golden.dtype}`);
check(kv.modelHash === golden.model_hash, `model hash ${kv.modelHash} != ${golden.model_hash}`);
check(kv.runId === (golden.run_id || ''), `run id ${kv.runId} != ${golden.run_id}`);
check(kv.ids instanceof BigInt64Array && kv.vectors instanceof Float32Array, 'wrong array types');
for (let i = 0; i < golden.count; i++) {
  const id = BigInt(golden.ids[i]);
  check(kv.ids[i] === id, `ids[${i}] = ${kv.ids[i]}, expected ${id}`);
  const row = kv.get(id);
  check(row !== null && row.length === kv.dim, `get(${id}) returned ${row}`);
  for (let j = 0; j < kv.dim; j++) {
    const want = golden.vectors[i][j];
    check(Object.is(kv.vectors[i * kv.dim + j], want), `vectors[${i}][${j}] = ${kv.vectors[i * kv.dim + j]}, expected ${want}`);
    check(Object.is(row[j], want), `get(${id})[${j}] = ${row[j]}, expected ${want}`);
  }
}
for (const missing of golden.missing) check(kv.get(BigInt(missing)) === null, `get(${missing}) should be null`);
process.stdout.write(`OK ${kv.count} items, dim ${kv.dim}, ${kv.dtype}\n`);
