'use strict';
// Coarse ranking in Node.js: the exported towers through onnxruntime-node, item vectors from a KV
// file through kv_reader.js. Driven by tests/serving/test_node_runtime.py.
//
//   node score_check.js <dir>
//
// <dir> holds user_tower.onnx, item_tower.onnx, items.kv and golden.json:
//   { user_inputs: {name: {dtype, shape, data}},   raw user/context features, data row-major:
//     item_inputs: {name: {dtype, shape, data}},   int64 as decimal strings, float32 null = NaN
//     candidates: [[decimal id strings] per user row],  ids present in items.kv
//     a, b }                                        score = a * <user vector, item vector> + b
// Prints one JSON object: {user_inputs, item_inputs (graph input names), user_vectors,
// item_vectors, scores}; exits 1 with a message on any error.

const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');
const { readKv } = require(path.join(__dirname, 'kv_reader.js'));

function tensor(name, { dtype, shape, data }) {
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) throw new Error(`input ${name}: ${data.length} values for shape [${shape}]`);
  if (dtype === 'int64') return new ort.Tensor('int64', BigInt64Array.from(data, (s) => BigInt(s)), shape);
  if (dtype === 'float32') return new ort.Tensor('float32', Float32Array.from(data, (x) => (x === null ? NaN : x)), shape);
  if (dtype === 'string') return new ort.Tensor('string', data, shape);
  throw new Error(`input ${name}: unknown dtype ${dtype}`);
}

async function vectors(modelPath, inputs) {
  const session = await ort.InferenceSession.create(modelPath, {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: 1,
    executionProviders: ['cpu'],
  });
  const feeds = {};
  for (const name of session.inputNames) {
    if (!(name in inputs)) throw new Error(`${modelPath} needs input ${name}, golden.json lacks it`);
    feeds[name] = tensor(name, inputs[name]);
  }
  const output = (await session.run(feeds)).vector;
  if (output === undefined) throw new Error(`${modelPath} has no output named "vector"`);
  const [rows, dim] = output.dims;
  const out = [];
  for (let i = 0; i < rows; i++) out.push(Array.from(output.data.subarray(i * dim, (i + 1) * dim)));
  return { names: session.inputNames, rows: out };
}

async function main() {
  const dir = process.argv[2];
  if (!dir) throw new Error('usage: node score_check.js <dir>');
  const golden = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));
  const kv = readKv(path.join(dir, 'items.kv'));
  const user = await vectors(path.join(dir, 'user_tower.onnx'), golden.user_inputs);
  const item = await vectors(path.join(dir, 'item_tower.onnx'), golden.item_inputs);
  const scores = golden.candidates.map((ids, row) => ids.map((id) => {
    const v = kv.get(BigInt(id));
    if (v === null) throw new Error(`candidate ${id} is not in items.kv`);
    const u = user.rows[row];
    if (u.length !== kv.dim) throw new Error(`user vector dim ${u.length} != KV dim ${kv.dim}`);
    let dot = 0;
    for (let j = 0; j < kv.dim; j++) dot += u[j] * v[j];
    return golden.a * dot + golden.b;
  }));
  process.stdout.write(JSON.stringify({
    user_inputs: user.names,
    item_inputs: item.names,
    user_vectors: user.rows,
    item_vectors: item.rows,
    scores,
  }));
}

main().catch((error) => {
  process.stderr.write(`score_check.js: ${error.stack || error}\n`);
  process.exit(1);
});
