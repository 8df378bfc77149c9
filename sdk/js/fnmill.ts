// fnmill SDK for JavaScript and TypeScript functions.
//
// A function is an ES module exporting `handler` with a `handle(event)` method (see
// `defineHandler`). This module wraps fnmill's host interfaces (fnmill:function/*, from
// wit/function.wit) in natural JavaScript: Uint8Array payloads, JSON helpers, errors to throw,
// SQL values from plain JS values, key-value buckets. `fnmill new js|ts` copies it into a project
// (src/fnmill.ts, or src/fnmill.js compiled from it); edit the project's copy freely.
import { get as configGet } from 'fnmill:function/config@0.1.0';
import { log as hostLog } from 'fnmill:function/logging@0.1.0';
import type { Level } from 'fnmill:function/logging@0.1.0';
import * as hostSql from 'fnmill:function/sql@0.1.0';
import * as hostKv from 'fnmill:function/keyvalue@0.1.0';
import type { Event, Header, Output } from 'fnmill:function/types@0.1.0';

export type { Event, Header, Output };

/** What `handle` may return: the outputs, synchronously or as a promise. */
export type HandleResult = Output[] | Promise<Output[]>;

/** The export fnmill calls: `export const handler = defineHandler((event) => [...])`. */
export function defineHandler(handle: (event: Event) => HandleResult): {
  handle: (event: Event) => HandleResult;
} {
  return { handle };
}

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * Thrown from `handle` to fail the event in a way fnmill understands: `retryable` (tried again
 * later, with backoff) or `fatal` (dead-lettered at once). Anything else thrown from `handle`
 * (a TypeError, a failed assertion) is a trap, like a panic in Rust.
 */
export class FunctionError extends Error {
  /** What the component returns as its `error` (the bindings read this property). */
  readonly payload: { tag: 'retryable' | 'fatal'; val: string };

  constructor(kind: 'retryable' | 'fatal', message: string) {
    super(message);
    this.name = kind === 'retryable' ? 'RetryableError' : 'FatalError';
    this.payload = { tag: kind, val: message };
  }

  /** Whether fnmill will retry the event. */
  get retryable(): boolean {
    return this.payload.tag === 'retryable';
  }
}

/** A transient failure: `throw retryable('inventory service timed out')`. */
export function retryable(message: string): FunctionError {
  return new FunctionError('retryable', message);
}

/** A failure retrying cannot fix: `throw fatal('order has no id')`. */
export function fatal(message: string): FunctionError {
  return new FunctionError('fatal', message);
}

// ---------------------------------------------------------------------------------------------
// Payloads, headers, outputs

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Whether `x` is a Uint8Array. The bindings make their arrays in another realm than the
 * function's module, so `instanceof Uint8Array` is false for an event's payload.
 */
export function isBytes(x: unknown): x is Uint8Array {
  return x instanceof Uint8Array || (ArrayBuffer.isView(x) && Object.prototype.toString.call(x) === '[object Uint8Array]');
}

/** UTF-8 bytes of a string. */
export function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Bytes as UTF-8 text; bytes that are not UTF-8 are a `fatal` error. */
export function text(data: Uint8Array): string {
  try {
    return strictDecoder.decode(data);
  } catch (e) {
    throw fatal(`payload is not UTF-8: ${errorMessage(e)}`);
  }
}

/** The value of the first header named `name` (case-insensitive), as text. */
export function header(event: { headers: Header[] }, name: string): string | undefined {
  const wanted = name.toLowerCase();
  const found = event.headers.find((h) => h.name.toLowerCase() === wanted);
  return found === undefined ? undefined : new TextDecoder().decode(found.value);
}

/** Options of `output`. */
export interface OutputOptions {
  /** Message key (Kafka key, AMQP routing key): bytes or text. */
  key?: Uint8Array | string;
  /** Headers: `[name, value]` pairs, an object, or WIT `Header`s. Values are text or bytes. */
  headers?: Header[] | Array<[string, string | Uint8Array]> | Record<string, string | Uint8Array>;
}

/**
 * An output to the destination *name* `destination` (a key of the route's `destinations`).
 * `payload` is sent as is when it is a Uint8Array, as UTF-8 when it is a string, and as JSON
 * (see `toJson`, with `content-type: application/json`) otherwise.
 */
export function output(destination: string, payload: unknown, options: OutputOptions = {}): Output {
  const headers = toHeaders(options.headers);
  let body: Uint8Array;
  if (isBytes(payload)) {
    body = payload;
  } else if (typeof payload === 'string') {
    body = encoder.encode(payload);
  } else {
    body = toJson(payload);
    if (!headers.some((h) => h.name.toLowerCase() === 'content-type')) {
      headers.push({ name: 'content-type', value: encoder.encode('application/json') });
    }
  }
  const key = typeof options.key === 'string' ? encoder.encode(options.key) : options.key;
  return { destination, key, payload: body, headers };
}

function toHeaders(headers: OutputOptions['headers']): Header[] {
  if (headers === undefined) return [];
  const pairs: Array<[string, string | Uint8Array]> = Array.isArray(headers)
    ? headers.map((h) => (Array.isArray(h) ? h : [h.name, h.value]))
    : Object.entries(headers);
  return pairs.map(([name, value]) => ({
    name,
    value: typeof value === 'string' ? encoder.encode(value) : value,
  }));
}

// ---------------------------------------------------------------------------------------------
// JSON
//
// JSON text tells 8 from 8.0; JavaScript numbers do not. `parseJson` remembers which members
// were written as floats with an integral value, and `toJson` writes them back the same way,
// so a function that passes fields through changes none of their bytes. `toJson` formats
// numbers as serde_json (Rust) does: integers as integers, floats in their shortest form with a
// `.0` when integral. Mark a computed float with `float(x)` to have it written as one.

/** A number to be written as a JSON float: `float(110)` → `110.0`. */
export class JsonFloat {
  constructor(readonly value: number) {}
  valueOf(): number {
    return this.value;
  }
  toJSON(): number {
    return this.value;
  }
}

/** `x` marked as a float for `toJson`. */
export function float(x: number): JsonFloat {
  return new JsonFloat(x);
}

/** Members of parsed objects (or indexes of arrays) that were integral floats in the text. */
const floatMembers = new WeakMap<object, Set<string | number>>();

/** Whether `container[member]` was written as a float (`8.0`, `1e3`) in the parsed JSON text. */
export function wasFloat(container: object, member: string | number): boolean {
  return floatMembers.get(container)?.has(member) ?? false;
}

/** The payload (or any bytes or text) parsed as JSON; invalid JSON is a `fatal` error. */
export function parseJson(data: Uint8Array | string): any {
  const source = typeof data === 'string' ? data : text(data);
  let value: any;
  try {
    value = JSON.parse(source);
  } catch (e) {
    throw fatal(`payload is not valid JSON: ${errorMessage(e)}`);
  }
  // Only a literal such as 8.0 or 1e3 loses information in JSON.parse; most payloads have none.
  if (/\d\.0+(?![0-9])|\d[eE]/.test(source)) {
    new FloatScanner(source).mark(value);
  }
  return value;
}

/** Walks the source text alongside the parsed value, recording integral float literals. */
class FloatScanner {
  private pos = 0;
  constructor(private readonly src: string) {}

  mark(value: unknown): void {
    this.skipWs();
    const c = this.src[this.pos];
    if (c === '{') {
      this.pos++;
      const obj = value as Record<string, unknown>;
      this.skipWs();
      if (this.src[this.pos] === '}') {
        this.pos++;
        return;
      }
      for (;;) {
        this.skipWs();
        const key = this.string();
        this.skipWs();
        this.pos++; // ':'
        this.member(obj, key, obj[key]);
        this.skipWs();
        if (this.src[this.pos++] === '}') return;
      }
    } else if (c === '[') {
      this.pos++;
      const arr = value as unknown[];
      this.skipWs();
      if (this.src[this.pos] === ']') {
        this.pos++;
        return;
      }
      for (let i = 0; ; i++) {
        this.member(arr, i, arr[i]);
        this.skipWs();
        if (this.src[this.pos++] === ']') return;
      }
    } else {
      this.scalar();
    }
  }

  private member(container: object, name: string | number, value: unknown): void {
    this.skipWs();
    const c = this.src[this.pos];
    if (c === '{' || c === '[') {
      // A repeated key keeps only its last value; walk the text of earlier ones all the same.
      this.mark(value !== null && typeof value === 'object' ? value : c === '{' ? {} : []);
      return;
    }
    const literal = this.scalar();
    if (typeof value === 'number' && Number.isInteger(value) && /[.eE]/.test(literal)) {
      let set = floatMembers.get(container);
      if (set === undefined) floatMembers.set(container, (set = new Set()));
      set.add(name);
    } else {
      floatMembers.get(container)?.delete(name);
    }
  }

  private scalar(): string {
    const start = this.pos;
    if (this.src[this.pos] === '"') {
      this.string();
    } else {
      while (this.pos < this.src.length && !/[\s,\]}]/.test(this.src[this.pos])) this.pos++;
    }
    return this.src.slice(start, this.pos);
  }

  private string(): string {
    const start = this.pos;
    this.pos++; // opening quote
    while (this.src[this.pos] !== '"') {
      this.pos += this.src[this.pos] === '\\' ? 2 : 1;
    }
    this.pos++;
    return JSON.parse(this.src.slice(start, this.pos));
  }

  private skipWs(): void {
    while (/\s/.test(this.src[this.pos] ?? '')) this.pos++;
  }
}

/** `value` as compact JSON bytes, numbers formatted as serde_json formats them. */
export function toJson(value: unknown): Uint8Array {
  return encoder.encode(stringify(value));
}

/** `value` as compact JSON text (see `toJson`). */
export function stringify(value: unknown): string {
  const out: string[] = [];
  write(value, out, undefined, undefined);
  return out.join('');
}

function write(value: unknown, out: string[], container: object | undefined, member: string | number | undefined): boolean {
  if (value instanceof JsonFloat) {
    out.push(formatFloat(value.value));
    return true;
  }
  if (value !== null && typeof value === 'object' && typeof (value as any).toJSON === 'function' && !isBytes(value)) {
    value = (value as any).toJSON();
  }
  switch (typeof value) {
    case 'number':
      if (!Number.isFinite(value)) out.push('null');
      else if (Number.isInteger(value) && !(container !== undefined && member !== undefined && wasFloat(container, member)) && Math.abs(value) < 2 ** 64) {
        out.push(BigInt(value).toString());
      } else out.push(formatFloat(value));
      return true;
    case 'bigint':
      out.push(value.toString());
      return true;
    case 'string':
      out.push(JSON.stringify(value));
      return true;
    case 'boolean':
      out.push(value ? 'true' : 'false');
      return true;
    case 'undefined':
    case 'function':
    case 'symbol':
      return false;
  }
  if (value === null) {
    out.push('null');
    return true;
  }
  if (Array.isArray(value) || isBytes(value)) {
    const items = Array.from(value as ArrayLike<unknown>);
    out.push('[');
    items.forEach((item, i) => {
      if (i > 0) out.push(',');
      if (!write(item, out, value as object, i)) out.push('null');
    });
    out.push(']');
    return true;
  }
  out.push('{');
  let first = true;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const mark = out.length;
    out.push(first ? '' : ',', JSON.stringify(k), ':');
    if (write(v, out, value as object, k)) first = false;
    else out.length = mark;
  }
  out.push('}');
  return true;
}

/**
 * A finite float in the shortest form that reads back as the same number, laid out as Rust's
 * ryu (and so serde_json) lays it out: `110.0`, `30.97`, `0.00012`, `1e16`, `1.5e-7`.
 */
export function formatFloat(x: number): string {
  if (!Number.isFinite(x)) return 'null';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  const [mantissa, exp] = Math.abs(x).toExponential().split('e');
  const digits = mantissa.replace('.', '');
  const length = digits.length;
  const kk = Number(exp) + 1; // 10^(kk-1) <= |x| < 10^kk
  const k = kk - length;
  if (k >= 0 && kk <= 16) return `${sign}${digits}${'0'.repeat(k)}.0`;
  if (kk > 0 && kk <= 16) return `${sign}${digits.slice(0, kk)}.${digits.slice(kk)}`;
  if (kk > -5 && kk <= 0) return `${sign}0.${'0'.repeat(-kk)}${digits}`;
  const e = `e${kk - 1}`;
  return length === 1 ? `${sign}${digits}${e}` : `${sign}${digits[0]}.${digits.slice(1)}${e}`;
}

// ---------------------------------------------------------------------------------------------
// Config and logging

/** The function's config value for `key` (its `config` table in fnmill.toml), or `fallback`. */
export function config(key: string): string | undefined;
export function config(key: string, fallback: string): string;
export function config(key: string, fallback?: string): string | undefined {
  return configGet(key) ?? fallback;
}

function logAt(level: Level) {
  return (...parts: unknown[]): void =>
    hostLog(level, parts.map((p) => (typeof p === 'string' ? p : stringifyForLog(p))).join(' '));
}

function stringifyForLog(p: unknown): string {
  if (p instanceof Error) return `${p.name}: ${p.message}`;
  try {
    return stringify(p);
  } catch {
    return String(p);
  }
}

/** Log lines in fnmill's log, tagged with the function and the event id. */
export const log = {
  trace: logAt('trace'),
  debug: logAt('debug'),
  info: logAt('info'),
  warn: logAt('warn'),
  error: logAt('error'),
};

// ---------------------------------------------------------------------------------------------
// SQL

/** A value as `sql` takes it: plain JS values, or a tagged WIT `Value`. */
export type SqlParam =
  | null
  | undefined
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Date
  | JsonFloat
  | { json: unknown }
  | hostSql.Value;

/** A row: column name → value (`null`, boolean, number or bigint, string, Uint8Array, Date, parsed JSON). */
export type Row = Record<string, unknown>;

/**
 * A failed `sql` call. Its `payload` makes it a handler error if `handle` lets it escape:
 * `retryable` when the database was unavailable or the error is transient (serialization
 * failure, deadlock...), `fatal` otherwise. `error` is the WIT `sql-error` itself.
 */
export class SqlError extends FunctionError {
  constructor(readonly error: hostSql.SqlError) {
    const [kind, message] = describeSqlError(error);
    super(kind, message);
    this.name = 'SqlError';
  }

  /** The SQLSTATE of a database error, e.g. `23505`. */
  get sqlstate(): string | undefined {
    return this.error.tag === 'database' ? this.error.val.sqlstate : undefined;
  }
}

function describeSqlError(e: hostSql.SqlError): ['retryable' | 'fatal', string] {
  switch (e.tag) {
    case 'database':
      return [e.val.retryable ? 'retryable' : 'fatal', `sqlstate=${e.val.sqlstate}: ${e.val.message}`];
    case 'unavailable':
      return ['retryable', `database unavailable: ${e.val}`];
    case 'not-granted':
      return ['fatal', `not-granted: ${e.val}`];
    case 'invalid':
      return ['fatal', `invalid: ${e.val}`];
  }
}

function toSqlValue(v: SqlParam): hostSql.Value {
  if (v === null || v === undefined) return { tag: 'null' };
  if (v instanceof JsonFloat) return { tag: 'float', val: v.value };
  if (isBytes(v)) return { tag: 'bytes', val: v };
  if (v instanceof Date) return { tag: 'timestamp', val: BigInt(v.getTime()) * 1000n };
  switch (typeof v) {
    case 'boolean':
      return { tag: 'boolean', val: v };
    case 'bigint':
      return { tag: 'int', val: v };
    case 'number':
      return Number.isSafeInteger(v) ? { tag: 'int', val: BigInt(v) } : { tag: 'float', val: v };
    case 'string':
      return { tag: 'text', val: v };
  }
  if ('tag' in v && typeof v.tag === 'string') return v as hostSql.Value;
  return { tag: 'json', val: stringify((v as { json: unknown }).json) };
}

function fromSqlValue(v: hostSql.Value): unknown {
  switch (v.tag) {
    case 'null':
      return null;
    case 'int':
      return v.val >= BigInt(Number.MIN_SAFE_INTEGER) && v.val <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.val) : v.val;
    case 'json':
      return JSON.parse(v.val);
    case 'timestamp':
      return new Date(Number(v.val / 1000n));
    default:
      return v.val;
  }
}

function callSql<T>(call: () => T): T {
  try {
    return call();
  } catch (e) {
    const payload = (e as { payload?: hostSql.SqlError } | null)?.payload;
    if (payload !== undefined && typeof payload === 'object' && 'tag' in payload) throw new SqlError(payload);
    throw e;
  }
}

/** SQL on the PostgreSQL data sources granted to the function. Parameters are `$1`, `$2`, ... */
export const sql = {
  /** The rows of `statement` on data source `source`, each as an object keyed by column. */
  query(source: string, statement: string, params: SqlParam[] = []): Row[] {
    const rows = callSql(() => hostSql.query(source, statement, params.map(toSqlValue)));
    return rows.rows.map((row) => {
      const obj: Row = {};
      rows.columns.forEach((column, i) => {
        obj[column] = fromSqlValue(row[i]);
      });
      return obj;
    });
  },

  /** Runs `statement` and returns how many rows it inserted, updated or deleted. */
  execute(source: string, statement: string, params: SqlParam[] = []): number {
    return Number(callSql(() => hostSql.execute(source, statement, params.map(toSqlValue))));
  },
};

// ---------------------------------------------------------------------------------------------
// Key-value buckets

/**
 * A failed key-value call. Uncaught in `handle`, it fails the event: `retryable` when Redis was
 * unavailable, `fatal` otherwise (a bucket not granted, a value `increment` cannot add to).
 */
export class KvError extends FunctionError {
  constructor(readonly error: hostKv.Error) {
    const message =
      error.tag === 'unavailable' ? `keyvalue unavailable: ${error.val}` : error.tag === 'other' ? `keyvalue: ${error.val}` : `keyvalue: ${error.tag}`;
    super(error.tag === 'unavailable' ? 'retryable' : 'fatal', message);
    this.name = 'KvError';
  }
}

function callKv<T>(call: () => T): T {
  try {
    return call();
  } catch (e) {
    const payload = (e as { payload?: hostKv.Error } | null)?.payload;
    if (payload !== undefined && typeof payload === 'object' && 'tag' in payload) throw new KvError(payload);
    throw e;
  }
}

/** An open bucket: keys are strings, values bytes (text and JSON helpers included). */
export class Bucket {
  constructor(private readonly inner: hostKv.Bucket) {}

  /** The value of `key`, or `undefined` if there is none. */
  get(key: string): Uint8Array | undefined {
    return callKv(() => this.inner.get(key));
  }

  /** The value of `key` as UTF-8 text. */
  getText(key: string): string | undefined {
    const v = this.get(key);
    return v === undefined ? undefined : new TextDecoder().decode(v);
  }

  /** The value of `key` parsed as JSON. */
  getJson(key: string): unknown {
    const v = this.get(key);
    return v === undefined ? undefined : parseJson(v);
  }

  /** Sets `key`: bytes as they are, a string as UTF-8, anything else as JSON. */
  set(key: string, value: unknown): void {
    const data = isBytes(value) ? value : typeof value === 'string' ? encoder.encode(value) : toJson(value);
    callKv(() => this.inner.set(key, data));
  }

  /** Deletes `key` (a missing key is fine). */
  delete(key: string): void {
    callKv(() => this.inner.delete(key));
  }

  /** Whether `key` exists. */
  exists(key: string): boolean {
    return callKv(() => this.inner.exists(key));
  }

  /** Adds `delta` (default 1) to the integer at `key` atomically; returns the new value. */
  increment(key: string, delta: number | bigint = 1): number {
    return Number(callKv(() => this.inner.increment(key, BigInt(delta))));
  }

  /** One page of keys; pass the returned `cursor` to get the next page, until it is undefined. */
  listKeys(cursor?: bigint): { keys: string[]; cursor?: bigint } {
    return callKv(() => this.inner.listKeys(cursor));
  }
}

/** Key-value buckets granted to the function (`functions.<name>.buckets` in fnmill.toml). */
export const kv = {
  /** Opens the bucket `name`; cheap, touches no connection. */
  open(name: string): Bucket {
    return new Bucket(callKv(() => hostKv.open(name)));
  },
};

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
