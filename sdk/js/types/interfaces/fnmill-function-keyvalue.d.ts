declare module 'fnmill:function/keyvalue@0.1.0' {
  /**
   * Opens the bucket named `identifier`.
   */
  export function open(identifier: string): Bucket;
  /**
   * Why a key-value operation failed.
   */
  export type Error = ErrorNoSuchStore | ErrorAccessDenied | ErrorUnavailable | ErrorOther;
  /**
   * There is no bucket by that name.
   */
  export interface ErrorNoSuchStore {
    tag: 'no-such-store',
  }
  /**
   * The function is not granted the bucket. No connection was touched.
   */
  export interface ErrorAccessDenied {
    tag: 'access-denied',
  }
  /**
   * Redis could not be reached or did not answer in time, or the pool was exhausted.
   * Transient: return `error::retryable`. (Not in `wasi:keyvalue`.)
   */
  export interface ErrorUnavailable {
    tag: 'unavailable',
    val: string,
  }
  /**
   * Anything else, e.g. `increment` of a value that is not a decimal integer.
   */
  export interface ErrorOther {
    tag: 'other',
    val: string,
  }
  /**
   * One page of keys from `list-keys`.
   */
  export interface KeyResponse {
    /**
     * Keys of the bucket, without its prefix.
     */
    keys: Array<string>,
    /**
     * Pass this to the next `list-keys` call; `none` when there are no more keys.
     */
    cursor?: bigint,
  }
  
  export class Bucket implements Disposable {
    /**
     * This type does not have a public constructor.
     */
    private constructor();
    /**
    * The value of `key`, or `none` if it does not exist.
    */
    get(key: string): Uint8Array | undefined;
    /**
    * Sets `key` to `value`, replacing any previous value.
    */
    set(key: string, value: Uint8Array): void;
    /**
    * Deletes `key`; deleting a missing key succeeds.
    */
    'delete'(key: string): void;
    /**
    * Whether `key` exists.
    */
    exists(key: string): boolean;
    /**
    * One page of the bucket's keys; start with `none`. Keys added or removed during the
    * listing may or may not appear; no key present throughout is missed.
    */
    listKeys(cursor: bigint | undefined): KeyResponse;
    /**
    * Adds `delta` to the integer stored at `key` (a missing key counts as 0) atomically and
    * returns the new value. The value is stored as decimal text.
    */
    increment(key: string, delta: bigint): bigint;
    [Symbol.dispose](): void;
  }
}
