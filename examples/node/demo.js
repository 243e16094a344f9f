#!/usr/bin/env node
'use strict';
// Drive a pxgrpc cluster from Node.js:   node demo.js [connection-file]
//
// Start a cluster first (`pxgrpc cluster start -n 2`); the connection file defaults to
// $PXGRPC_CONNECTION_FILE or ~/.pxgrpc/controller.json.

const assert = require('assert');
const { Cluster, NDArray, Opaque, PxError, TYPED_OR_REPR } = require('./pxgrpc');

function show(label, value) {
  console.log(`${label}: ${value}`);
}

async function main() {
  const cluster = Cluster.fromFile(process.argv[2]);
  try {
    // 1. Who is there.
    const engines = await cluster.listEngines();
    show('engines', JSON.stringify(engines.map((e) => e.engine_id)));
    for (const e of engines) console.log(`  engine ${e.engine_id}: pid ${e.pid} on ${e.hostname}, Python ${e.python_version}`);

    // 2. Run code and follow its output live. The engines wait until interrupted: they only are
    //    because this client saw their first line while they were still running.
    const seen = new Set();
    const results = await cluster.execute(
      'import os, time\nprint(f"engine working in pid {os.getpid()}", flush=True)\ntime.sleep(30)\n',
      {
        onOutput: ({ engine_id: id, stream, text }) => {
          process.stdout.write(`[${stream === 'OUTPUT_STREAM_STDERR' ? 'stderr' : 'stdout'}:${id}] ${text}`);
          if (!seen.has(id)) {
            seen.add(id);
            cluster.interrupt([id]).catch((err) => console.error(`interrupt failed: ${err.message}`));
          }
        },
      },
    );
    show('live output, then interrupted', results.map((r) => `${r.engine_id}=${r.error.ename}`).join(' '));

    // 3. Typed values: what Python sees, and what comes back.
    const values = {
      n: 42,
      x: 2.5,
      big: 2n ** 62n,
      s: 'héllo ✓',
      ok: true,
      nothing: null,
      raw: Buffer.from([0, 1, 2, 255]),
      list: [1, 'two', [3.5]],
      obj: { a: 1, b: [true, false] },
      vec: Float64Array.of(0.5, 1.5, 2.5),
      ints: Int32Array.of(-1, 0, 1),
      mat: new NDArray(Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]),
      large: Float64Array.from({ length: 100000 }, (_, i) => i / 2), // 800 KB: uploaded as a blob
      blob: Buffer.alloc(2 * 1024 * 1024, 7), // 2 MiB of bytes: a blob too
    };
    await cluster.push(values);
    const describe =
      'import numpy as np\n' +
      'def kind(v):\n' +
      '    if isinstance(v, np.ndarray):\n' +
      '        return f"ndarray[{v.dtype}]{v.shape}"\n' +
      '    return type(v).__name__\n' +
      `print("python sees:", " ".join(f"{k}={kind(globals()[k])}" for k in ${JSON.stringify(Object.keys(values))}))\n`;
    await cluster.execute(describe, { targets: [0], onOutput: ({ text }) => process.stdout.write(text) });
    const [back] = await cluster.pull(Object.keys(values), { targets: [0] });
    const names = Object.keys(values);
    names.forEach((name, i) => assert.deepStrictEqual(back[i], values[name], `${name} changed on its way back`));
    show('round trip', `ok (${names.length} values)`);
    await cluster.execute('doubled = vec * 2\ntotal = int(large.sum())', { targets: [0] });
    const [[doubled, total]] = await cluster.pull(['doubled', 'total'], { targets: [0] });
    show('computed in Python', `doubled=${Array.from(doubled)} total=${total}`);

    // 4. Python-only objects never come back as pickles: a typed error, or a repr on request.
    await cluster.execute('s = {1, 2, 3}', { targets: [0] });
    const [error] = await cluster.pullOrError('s', { targets: [0] });
    assert(error instanceof PxError);
    show('typed-only pull of a set', `${error.ename}: ${error.evalue}`);
    const [opaque] = await cluster.pull(['s'], { targets: [0], single: true, encoding: TYPED_OR_REPR });
    assert(opaque instanceof Opaque);
    show('repr pull of a set', `${opaque.typeName} ${opaque.repr}`);

    // 5. Scatter a list, transform the parts in place, gather them back.
    await cluster.scatter('part', Array.from({ length: 10 }, (_, i) => i));
    await cluster.execute('print("my part:", part)\npart = [x * x for x in part]', {
      onOutput: ({ engine_id: id, text }) => process.stdout.write(`[stdout:${id}] ${text}`),
    });
    show('gathered', JSON.stringify(await cluster.gather('part')));

    // 6. The same with an array: each engine gets a slice, gather joins them again.
    await cluster.scatter('chunk', Float64Array.from({ length: 11 }, (_, i) => i));
    await cluster.execute('chunk = chunk + 0.5');
    show('gathered array', Array.from(await cluster.gather('chunk')).join(','));
  } finally {
    cluster.close();
  }
}

main().catch((err) => {
  console.error(`demo failed: ${err.stack || err}`);
  process.exit(1);
});
