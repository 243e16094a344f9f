'use strict';
// A small pxgrpc client for Node.js, written from protos/pxgrpc/v1/*.proto and docs/protocol.md
// alone: it loads the .proto files at run time (no generated code) and speaks the Controller
// service with the token from the cluster's connection file.
//
//   const { Cluster } = require('./pxgrpc');
//   const cluster = Cluster.fromFile();              // ~/.pxgrpc/controller.json by default
//   console.log(await cluster.listEngines());
//   await cluster.push({ x: Float64Array.of(1, 2, 3) });
//   console.log(await cluster.pull(['x']));           // one entry per engine
//
// Values map between JavaScript and Python like this (see toValue / fromValue):
//   null <-> None, boolean <-> bool, integer Number or BigInt <-> int, other Number <-> float,
//   string <-> str, Buffer <-> bytes, Array <-> list, plain object <-> dict,
//   Float64Array/Int32Array/... <-> 1-d numpy array, NDArray (data + shape) <-> n-d numpy array.

const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'protos');
// Buffers larger than this go into a blob (the protocol allows up to 1 MiB inline).
const INLINE_LIMIT = 256 * 1024;
// Size of the data chunks of an upload (the protocol wants 1-4 MiB, at most 8 MiB).
const CHUNK_SIZE = 1024 * 1024;
const MAX_MESSAGE = 64 * 1024 * 1024;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

// Result encodings: what non-Python clients ask engines for.
const TYPED_ONLY = 'RESULT_ENCODING_TYPED_ONLY';
const TYPED_OR_REPR = 'RESULT_ENCODING_TYPED_OR_REPR';

const ORDER = os.endianness() === 'LE' ? '<' : '>';
// numpy dtype (without byte order) <-> typed array class.
const TYPED_ARRAYS = [
  ['f8', Float64Array], ['f4', Float32Array], ['i8', BigInt64Array], ['u8', BigUint64Array],
  ['i4', Int32Array], ['u4', Uint32Array], ['i2', Int16Array], ['u2', Uint16Array],
  ['i1', Int8Array], ['u1', Uint8Array],
];

function loadPackage() {
  const definition = protoLoader.loadSync('pxgrpc/v1/controller.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true, // field names exactly as in the .proto files (engine_ids, blob_id, ...)
    longs: String, // int64 fields arrive as decimal strings: no silent precision loss
    enums: String, // enum values arrive as their names ('TASK_STATUS_OK')
    defaults: true, // unset scalars read as 0, "" and false (engine 0, TASK_STATUS_OK)
    arrays: true,
    objects: true,
    oneofs: true, // each oneof also gives its set field's name: value.kind === 'int_value'
  });
  return grpc.loadPackageDefinition(definition).pxgrpc.v1;
}

/** An n-dimensional array: a typed array of the elements in row-major order, and the shape. */
class NDArray {
  constructor(data, shape, dtype) {
    this.data = data;
    this.shape = shape || [data.length];
    this.dtype = dtype || dtypeOf(data);
  }
}

/** A Python object that has no typed form: its type name and repr (TYPED_OR_REPR results). */
class Opaque {
  constructor(typeName, repr) {
    this.typeName = typeName;
    this.repr = repr;
  }
  toString() {
    return this.repr;
  }
}

/** A failed call (grpc status and details) or a failed task (the remote exception). */
class PxError extends Error {
  constructor(message, fields) {
    super(message);
    Object.assign(this, fields);
  }
}

function dtypeOf(typed) {
  for (const [code, cls] of TYPED_ARRAYS) {
    if (typed instanceof cls && !Buffer.isBuffer(typed)) {
      return (code.endsWith('1') ? '|' : ORDER) + code;
    }
  }
  throw new TypeError(`no dtype for ${typed.constructor.name}`);
}

function newId() {
  return crypto.randomUUID().replace(/-/g, '');
}

// --- values --------------------------------------------------------------------------------

/** Buffers of one request that are too large to inline: they become one uploaded blob. */
class OutgoingBlob {
  constructor() {
    this.blobId = newId();
    this.parts = [];
    this.size = 0;
  }
  buffer(bytes) {
    if (bytes.length <= INLINE_LIMIT) return { inline: bytes };
    const slice = { blob_id: this.blobId, offset: this.size, length: bytes.length };
    this.parts.push(bytes);
    this.size += bytes.length;
    return { blob: slice };
  }
}

function bytesOf(typed) {
  return Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength); // a view, no copy
}

/** A JavaScript value as a pxgrpc.v1.Value message (large buffers go into `blob`). */
function toValue(x, blob) {
  if (x === null || x === undefined) return { null_value: {} };
  if (typeof x === 'boolean') return { bool_value: x };
  if (typeof x === 'bigint') {
    if (x < INT64_MIN || x > INT64_MAX) throw new RangeError(`${x} does not fit in 64 bits`);
    return { int_value: x.toString() };
  }
  if (typeof x === 'number') {
    return Number.isSafeInteger(x) ? { int_value: x } : { float_value: x };
  }
  if (typeof x === 'string') return { string_value: x };
  if (Buffer.isBuffer(x)) {
    return x.length <= INLINE_LIMIT ? { bytes_value: x } : { large_bytes_value: blob.buffer(x) };
  }
  if (x instanceof NDArray) {
    return { array_value: { dtype: x.dtype, shape: x.shape, data: blob.buffer(bytesOf(x.data)) } };
  }
  if (ArrayBuffer.isView(x) && !(x instanceof DataView)) return toValue(new NDArray(x), blob);
  if (Array.isArray(x)) return { list_value: { items: x.map((item) => toValue(item, blob)) } };
  if (x instanceof Map) x = Object.fromEntries(x);
  if (typeof x === 'object') {
    const entries = {};
    for (const [key, item] of Object.entries(x)) entries[key] = toValue(item, blob);
    return { map_value: { entries } };
  }
  throw new TypeError(`cannot send a ${typeof x} to Python`);
}

function readBuffer(buffer, blobs) {
  if (!buffer || !buffer.location) return Buffer.alloc(0);
  if (buffer.location === 'inline') return buffer.inline;
  const { blob_id: blobId, offset, length } = buffer.blob;
  const blob = blobs.get(blobId);
  if (!blob) throw new Error(`result references blob ${blobId}, which was not downloaded`);
  return blob.subarray(Number(offset), Number(offset) + Number(length));
}

function fromArray(array, blobs) {
  const bytes = readBuffer(array.data, blobs);
  const shape = array.shape.map(Number);
  const entry = TYPED_ARRAYS.find(([code]) => array.dtype === (code.endsWith('1') ? '|' : ORDER) + code);
  if (!entry) return new NDArray(new Uint8Array(bytes), shape, array.dtype); // bool, complex, ...
  const copy = new Uint8Array(bytes.length); // typed arrays need aligned memory: copy once
  copy.set(bytes);
  const typed = new entry[1](copy.buffer, 0, bytes.length / entry[1].BYTES_PER_ELEMENT);
  return shape.length === 1 ? typed : new NDArray(typed, shape, array.dtype);
}

/** A pxgrpc.v1.Value message as a JavaScript value (`blobs`: blob id -> downloaded Buffer). */
function fromValue(value, blobs = new Map()) {
  switch (value.kind) {
    case 'null_value': return null;
    case 'bool_value': return value.bool_value;
    case 'int_value': {
      const n = BigInt(value.int_value);
      return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
    }
    case 'float_value': return value.float_value;
    case 'string_value': return value.string_value;
    case 'bytes_value': return value.bytes_value;
    case 'large_bytes_value': return Buffer.from(readBuffer(value.large_bytes_value, blobs));
    case 'list_value': return value.list_value.items.map((item) => fromValue(item, blobs));
    case 'map_value': {
      const out = {};
      for (const [key, item] of Object.entries(value.map_value.entries)) out[key] = fromValue(item, blobs);
      return out;
    }
    case 'array_value': return fromArray(value.array_value, blobs);
    case 'opaque_value': return new Opaque(value.opaque_value.type_name, value.opaque_value.repr);
    case 'pickled_value':
      throw new Error(`got a pickled ${value.pickled_value.type_name}: ask for a typed encoding`);
    default: throw new Error(`Value with no kind: ${JSON.stringify(value)}`);
  }
}

// --- the cluster --------------------------------------------------------------------------

function defaultConnectionFile() {
  if (process.env.PXGRPC_CONNECTION_FILE) return process.env.PXGRPC_CONNECTION_FILE;
  const dir = process.env.PXGRPC_DIR || path.join(os.homedir(), '.pxgrpc');
  return path.join(dir, 'controller.json');
}

function credentialsFor(info) {
  if (!info.tls && !info.tls_ca) return grpc.credentials.createInsecure();
  const pem = (text) => (text ? Buffer.from(text) : null);
  return grpc.credentials.createSsl(pem(info.tls_ca), pem(info.tls_client_key), pem(info.tls_client_cert));
}

class Cluster {
  /** Connect with a connection file (JSON written by the controller). */
  static fromFile(file = defaultConnectionFile()) {
    return new Cluster(JSON.parse(fs.readFileSync(file, 'utf8')));
  }

  constructor(info) {
    if (!info.url || !info.token) throw new Error('connection info needs url and token');
    const options = {
      'grpc.max_send_message_length': MAX_MESSAGE,
      'grpc.max_receive_message_length': MAX_MESSAGE,
    };
    if (info.tls_server_name) options['grpc.ssl_target_name_override'] = info.tls_server_name;
    const pkg = loadPackage();
    this.client = new pkg.Controller(info.url, credentialsFor(info), options);
    this.metadata = new grpc.Metadata();
    this.metadata.set('authorization', `bearer ${info.token}`);
  }

  close() {
    this.client.close();
  }

  unary(method, request) {
    return new Promise((resolve, reject) => {
      this.client[method](request, this.metadata, (err, reply) => (err ? reject(callError(method, err)) : resolve(reply)));
    });
  }

  /** A server-streaming task call: live output to `onOutput`, then the results in engine order. */
  tasks(method, request, onOutput = () => {}) {
    return new Promise((resolve, reject) => {
      const results = [];
      const call = this.client[method](request, this.metadata);
      call.on('data', (event) => {
        if (event.kind === 'output') onOutput(event.output);
        else if (event.kind === 'result') results.push(event.result);
      });
      call.on('error', (err) => reject(callError(method, err)));
      call.on('end', () => resolve(results.sort((a, b) => a.engine_id - b.engine_id)));
    });
  }

  async listEngines() {
    return (await this.unary('ListEngines', {})).engines;
  }

  /** Run Python code; `onOutput({engine_id, stream, text})` sees stdout/stderr as it is printed. */
  execute(code, { targets = 'all', onOutput } = {}) {
    return this.tasks('Execute', { targets: targetsOf(targets), code }, onOutput);
  }

  /** Assign variables on the engines: `{name: value}`. */
  async push(namespace, { targets = 'all' } = {}) {
    const blob = new OutgoingBlob();
    const values = {};
    for (const [name, value] of Object.entries(namespace)) values[name] = toValue(value, blob);
    await this.uploadBlob(blob);
    return check(await this.tasks('Push', { targets: targetsOf(targets), namespace: values }));
  }

  /** Read variables: one entry per engine (a list of the values, or the value with `single`). */
  async pull(names, { targets = 'all', single = false, encoding = TYPED_ONLY } = {}) {
    const request = { targets: targetsOf(targets), names, single, encoding };
    const results = check(await this.tasks('Pull', request));
    const blobs = await this.downloadAll(results.flatMap((r) => r.blob_ids));
    return results.map((r) => fromValue(r.value, blobs));
  }

  /** Like pull of one name, but a failed engine gives its error instead of throwing. */
  async pullOrError(name, { targets = 'all', encoding = TYPED_ONLY } = {}) {
    const results = await this.tasks('Pull', { targets: targetsOf(targets), names: [name], single: true, encoding });
    const blobs = await this.downloadAll(results.flatMap((r) => r.blob_ids));
    return results.map((r) => (r.status === 'TASK_STATUS_OK' ? fromValue(r.value, blobs) : taskError(r)));
  }

  /** Split an Array (or typed array, along its first axis) across the engines as `name`. */
  async scatter(name, sequence, { targets = 'all' } = {}) {
    const blob = new OutgoingBlob();
    const value = toValue(sequence, blob);
    await this.uploadBlob(blob);
    return check(await this.tasks('Scatter', { targets: targetsOf(targets), name, value }));
  }

  /** Pull `name` from every engine and join the parts in engine order. */
  async gather(name, { targets = 'all', encoding = TYPED_ONLY } = {}) {
    const reply = await this.unary('Gather', { targets: targetsOf(targets), name, encoding });
    check(reply.results);
    const blobs = await this.downloadAll(reply.results.flatMap((r) => r.blob_ids));
    return fromValue(reply.value, blobs);
  }

  async interrupt(engineIds) {
    return (await this.unary('Interrupt', { targets: targetsOf(engineIds) })).engine_ids;
  }

  // --- blobs: a header message, then data chunks -------------------------------------------

  async uploadBlob(blob) {
    if (blob.size === 0) return;
    await new Promise((resolve, reject) => {
      const call = this.client.Upload(this.metadata, (err) => (err ? reject(callError('Upload', err)) : resolve()));
      call.write({ header: { blob_id: blob.blobId, size: blob.size } });
      for (const part of blob.parts) {
        for (let at = 0; at < part.length; at += CHUNK_SIZE) call.write({ data: part.subarray(at, at + CHUNK_SIZE) });
      }
      call.end();
    });
  }

  download(blobId) {
    return new Promise((resolve, reject) => {
      const chunks = [];
      const call = this.client.Download({ blob_id: blobId }, this.metadata);
      call.on('data', (chunk) => {
        if (chunk.part === 'data') chunks.push(chunk.data); // the first message is the header
      });
      call.on('error', (err) => reject(callError('Download', err)));
      call.on('end', () => resolve(Buffer.concat(chunks)));
    });
  }

  async downloadAll(blobIds) {
    const blobs = new Map();
    for (const blobId of blobIds) blobs.set(blobId, await this.download(blobId));
    return blobs;
  }
}

function targetsOf(targets) {
  if (targets === 'all') return { all: true };
  return { engine_ids: Array.isArray(targets) ? targets : [targets] };
}

function callError(method, err) {
  const name = Object.keys(grpc.status).find((key) => grpc.status[key] === err.code) || err.code;
  return new PxError(`${method}: ${name}: ${err.details}`, { code: name, details: err.details });
}

function taskError(result) {
  const { ename, evalue, traceback } = result.error || {};
  return new PxError(`engine ${result.engine_id}: ${ename}: ${evalue}`, {
    engineId: result.engine_id, ename, evalue, traceback,
  });
}

function check(results) {
  const failed = results.find((r) => r.status !== 'TASK_STATUS_OK');
  if (failed) throw taskError(failed);
  return results;
}

module.exports = {
  Cluster, NDArray, Opaque, PxError, toValue, fromValue, OutgoingBlob, defaultConnectionFile,
  TYPED_ONLY, TYPED_OR_REPR,
};
