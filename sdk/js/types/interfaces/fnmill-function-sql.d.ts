declare module 'fnmill:function/sql@0.1.0' {
  /**
   * Runs a statement that returns rows (`select`, or `insert ... returning`) on the data
   * source named `source`.
   */
  export function query(source: string, statement: string, params: Array<Value>): Rows;
  /**
   * Runs a statement and returns how many rows it inserted, updated or deleted.
   */
  export function execute(source: string, statement: string, params: Array<Value>): bigint;
  /**
   * A parameter or column value.
   * 
   * Parameters are converted to the statement's parameter type: `int` fits `smallint`,
   * `integer` (range-checked), `bigint` and `oid`; `float` fits `real` and `double precision`;
   * `text` fits `text`, `varchar`, `char(n)` and `name`; `json` fits `json` and `jsonb`;
   * `timestamp` fits `timestamp` and `timestamptz`. For other types, cast the parameter in
   * SQL (`$1::text::numeric`). Columns of other types (numeric, uuid, date...) are refused with
   * `invalid`: cast them in SQL (`price::float8`, `id::text`).
   */
  export type Value = ValueNull | ValueBoolean | ValueInt | ValueFloat | ValueText | ValueBytes | ValueJson | ValueTimestamp;
  /**
   * SQL `NULL`, of any type.
   */
  export interface ValueNull {
    tag: 'null',
  }
  /**
   * `boolean`.
   */
  export interface ValueBoolean {
    tag: 'boolean',
    val: boolean,
  }
  /**
   * `smallint`, `integer`, `bigint`, `oid`.
   */
  export interface ValueInt {
    tag: 'int',
    val: bigint,
  }
  /**
   * `real`, `double precision`.
   */
  export interface ValueFloat {
    tag: 'float',
    val: number,
  }
  /**
   * `text`, `varchar`, `char(n)`, `name`.
   */
  export interface ValueText {
    tag: 'text',
    val: string,
  }
  /**
   * `bytea`.
   */
  export interface ValueBytes {
    tag: 'bytes',
    val: Uint8Array,
  }
  /**
   * `json` or `jsonb`, as JSON text.
   */
  export interface ValueJson {
    tag: 'json',
    val: string,
  }
  /**
   * `timestamp` or `timestamptz`: microseconds since the Unix epoch, UTC (PostgreSQL's
   * resolution). A `timestamp` without time zone is taken to be UTC.
   */
  export interface ValueTimestamp {
    tag: 'timestamp',
    val: bigint,
  }
  /**
   * The rows a query returned.
   */
  export interface Rows {
    /**
     * Column names, in order.
     */
    columns: Array<string>,
    /**
     * One list of values per row, in column order.
     */
    rows: Array<Array<Value>>,
  }
  /**
   * An error the database returned for the statement.
   */
  export interface DatabaseError {
    /**
     * The five-character SQLSTATE, e.g. `42P01` (undefined table), `23505` (unique
     * violation).
     */
    sqlstate: string,
    /**
     * The server's message, with detail and hint when it gave them.
     */
    message: string,
    /**
     * Whether the same statement may succeed if tried again later: serialization failure
     * and deadlock (class 40), connection exception (08), insufficient resources (53),
     * the connection terminated by an operator (57P01..57P03). Return `error::retryable`
     * for these.
     */
    retryable: boolean,
  }
  /**
   * Why a statement failed.
   */
  export type SqlError = SqlErrorDatabase | SqlErrorUnavailable | SqlErrorNotGranted | SqlErrorInvalid;
  /**
   * The database ran the statement and refused or failed it.
   */
  export interface SqlErrorDatabase {
    tag: 'database',
    val: DatabaseError,
  }
  /**
   * No connection could be had or kept: the pool was exhausted for its `wait_timeout`,
   * or the database refused or dropped the connection. Transient: return
   * `error::retryable`.
   */
  export interface SqlErrorUnavailable {
    tag: 'unavailable',
    val: string,
  }
  /**
   * The function is not granted this data source (or there is none by that name). No
   * connection was touched. Retrying will not help.
   */
  export interface SqlErrorNotGranted {
    tag: 'not-granted',
    val: string,
  }
  /**
   * A parameter did not fit its parameter type, the parameter count is wrong, or a
   * column's type is not converted. Retrying will not help.
   */
  export interface SqlErrorInvalid {
    tag: 'invalid',
    val: string,
  }
}
