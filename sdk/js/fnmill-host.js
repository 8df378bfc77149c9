// A stand-in for fnmill's host in unit tests under Node.js:
//
//   node --import ./test/fnmill-host.js --test test/
//
// Loaded with --import, it makes every `fnmill:function/*` import resolve to this module, so the
// function and the SDK run unchanged; a test sets what the host answers through `host`:
//
//   import { host } from './fnmill-host.js';
//   host.reset({ config: { greeting: 'Hi' } });
//
// `host.config` answers config.get; `host.logs` collects `{ level, message }`; `host.sql` is
// `(source, statement, params) => rows` (params and rows as WIT values: `{ tag, val }`; return
// `{ columns, rows }` for query and a number for execute); `host.buckets` maps bucket names to
// Maps of Uint8Array values.
import { register } from 'node:module';

register(
  'data:text/javascript,' +
    encodeURIComponent(`
export async function resolve(specifier, context, next) {
  if (specifier.startsWith('fnmill:function/')) {
    return { url: ${JSON.stringify(import.meta.url)}, shortCircuit: true };
  }
  return next(specifier, context);
}`),
);

/** What the host errors look like to the bindings: the WIT error value in `payload`. */
class HostError extends Error {
  constructor(payload) {
    super(JSON.stringify(payload));
    this.payload = payload;
  }
}

/** The fake host's state; `reset` starts a test from a clean one. */
export const host = {
  /** @type {Record<string, string>} */
  config: {},
  /** @type {Array<{ level: string, message: string }>} */
  logs: [],
  /** @type {undefined | ((source: string, statement: string, params: unknown[]) => any)} */
  sql: undefined,
  /** @type {Record<string, Map<string, Uint8Array>>} */
  buckets: {},
  /** @param {{ config?: Record<string, string>, sql?: (source: string, statement: string, params: unknown[]) => any, buckets?: Record<string, Map<string, Uint8Array>> }} [state] */
  reset(state = {}) {
    this.config = state.config ?? {};
    this.logs = [];
    this.sql = state.sql;
    this.buckets = state.buckets ?? {};
  },
};

// fnmill:function/config
/** @param {string} key */
export function get(key) {
  return Object.hasOwn(host.config, key) ? host.config[key] : undefined;
}

// fnmill:function/logging
/** @param {string} level @param {string} message */
export function log(level, message) {
  host.logs.push({ level, message });
}

// fnmill:function/sql
/** @param {string} source @param {string} statement @param {unknown[]} params */
export function query(source, statement, params) {
  if (host.sql === undefined) throw new HostError({ tag: 'not-granted', val: source });
  return host.sql(source, statement, params);
}

/** @param {string} source @param {string} statement @param {unknown[]} params */
export function execute(source, statement, params) {
  if (host.sql === undefined) throw new HostError({ tag: 'not-granted', val: source });
  return BigInt(host.sql(source, statement, params));
}

// fnmill:function/keyvalue
export class Bucket {
  /** @param {Map<string, Uint8Array>} store */
  constructor(store) {
    this.store = store;
  }
  /** @param {string} key */
  get(key) {
    return this.store.get(key);
  }
  /** @param {string} key @param {Uint8Array} value */
  set(key, value) {
    this.store.set(key, value);
  }
  /** @param {string} key */
  delete(key) {
    this.store.delete(key);
  }
  /** @param {string} key */
  exists(key) {
    return this.store.has(key);
  }
  /** @param {string} key @param {bigint} delta */
  increment(key, delta) {
    const current = this.store.has(key) ? BigInt(new TextDecoder().decode(this.store.get(key))) : 0n;
    const next = current + delta;
    this.store.set(key, new TextEncoder().encode(next.toString()));
    return next;
  }
  /** @param {bigint | undefined} _cursor */
  listKeys(_cursor) {
    return { keys: [...this.store.keys()].sort(), cursor: undefined };
  }
}

/** @param {string} name */
export function open(name) {
  const store = host.buckets[name];
  if (store === undefined) throw new HostError({ tag: 'no-such-store' });
  return new Bucket(store);
}
