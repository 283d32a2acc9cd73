'use strict';
// Reader for coarserank KV files (docs/kv-format.md), Node.js >= 18, no dependencies.
//
//   const { readKv } = require('./kv_reader.js');
//   const kv = readKv('runs/demo/items.kv');          // { verify: false } skips the payload CRC
//   kv.dim, kv.count, kv.modelHash, kv.dtype, kv.runId; // header fields (runId '' in version 1)
//   kv.ids;                                            // BigInt64Array, sorted ascending
//   kv.vectors;                                        // Float32Array [count * dim], row i = ids[i]
//   kv.get(42n);                                       // Float32Array [dim] view, or null if absent

const fs = require('fs');
const os = require('os');
const zlib = require('zlib');

const MAGIC = 'CRKV';
const FORMAT_VERSIONS = [1, 2];
const HEADER_SIZE = 128;
const DTYPES = { 1: 'float32', 2: 'float16' };
const LITTLE_ENDIAN_HOST = os.endianness() === 'LE';

let crcTable = null;
function crc32(bytes) {
  if (typeof zlib.crc32 === 'function') return zlib.crc32(bytes) >>> 0; // Node >= 20.15
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

function readKv(path, options = {}) {
  const verify = options.verify !== false;
  const buf = fs.readFileSync(path);
  const fail = (problem) => {
    throw new Error(`KV file ${path}: ${problem}`);
  };
  if (buf.length < HEADER_SIZE) fail(`truncated: ${buf.length} bytes, a KV file has a ${HEADER_SIZE}-byte header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
  const magic = buf.toString('latin1', 0, 4);
  if (magic !== MAGIC) fail(`wrong magic ${JSON.stringify(magic)}, expected "${MAGIC}"`);
  const version = dv.getUint16(4, true);
  if (!FORMAT_VERSIONS.includes(version)) {
    fail(`unsupported format version ${version}, this reader knows ${FORMAT_VERSIONS.join(', ')}`);
  }
  if (crc32(buf.subarray(0, 124)) !== dv.getUint32(124, true)) fail('header checksum mismatch');
  let runId = '';
  if (version >= 2) { // the run-id block: length, 56 bytes of UTF-8, CRC32 of bytes [128, 188)
    if (buf.length < 192) fail(`truncated: ${buf.length} bytes, a version-2 KV file has a 192-byte header`);
    if (crc32(buf.subarray(128, 188)) !== dv.getUint32(188, true)) fail('run-id block checksum mismatch');
    runId = buf.toString('utf8', 132, 132 + Math.min(dv.getUint32(128, true), 56));
  }
  const dtype = DTYPES[dv.getUint16(6, true)];
  if (dtype === undefined) fail(`unknown dtype code ${dv.getUint16(6, true)}`);
  const count = Number(dv.getBigUint64(8, true));
  const dim = dv.getUint32(16, true);
  const idsOffset = Number(dv.getBigUint64(24, true));
  const vectorsOffset = Number(dv.getBigUint64(32, true));
  const fileSize = Number(dv.getBigUint64(40, true));
  const hashLength = dv.getUint32(52, true);
  const modelHash = buf.toString('utf8', 56, 56 + hashLength);
  if (buf.length !== fileSize) fail(`truncated or padded: ${buf.length} bytes, the header says ${fileSize}`);
  if (verify && crc32(buf.subarray(idsOffset)) !== dv.getUint32(48, true)) fail('data checksum mismatch');

  // Typed-array views need aligned offsets and a little-endian host; otherwise decode by copying.
  let ids;
  if (LITTLE_ENDIAN_HOST && (buf.byteOffset + idsOffset) % 8 === 0) {
    ids = new BigInt64Array(buf.buffer, buf.byteOffset + idsOffset, count);
  } else {
    ids = new BigInt64Array(count);
    for (let i = 0; i < count; i++) ids[i] = dv.getBigInt64(idsOffset + 8 * i, true);
  }
  let vectors;
  const n = count * dim;
  if (dtype === 'float32' && LITTLE_ENDIAN_HOST && (buf.byteOffset + vectorsOffset) % 4 === 0) {
    vectors = new Float32Array(buf.buffer, buf.byteOffset + vectorsOffset, n);
  } else {
    vectors = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      vectors[i] = dtype === 'float32'
        ? dv.getFloat32(vectorsOffset + 4 * i, true)
        : halfToFloat(dv.getUint16(vectorsOffset + 2 * i, true));
    }
  }

  function get(id) {
    const key = BigInt(id);
    let lo = 0;
    let hi = count - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (ids[mid] < key) lo = mid + 1;
      else if (ids[mid] > key) hi = mid - 1;
      else return vectors.subarray(mid * dim, (mid + 1) * dim);
    }
    return null;
  }

  return { dim, count, dtype, modelHash, runId, ids, vectors, get };
}

module.exports = { readKv, halfToFloat };
