declare module 'fnmill:function/types@0.1.0' {
  /**
   * One message header. Values are bytes because Kafka headers are bytes; most are UTF-8 text.
   */
  export interface Header {
    /**
     * Header name, e.g. `content-type` or `traceparent`.
     */
    name: string,
    /**
     * Header value as the broker carried it.
     */
    value: Uint8Array,
  }
  /**
   * An event delivered to the function.
   */
  export interface Event {
    /**
     * Unique id of the event within its source: the Kafka `topic/partition/offset`, the
     * AMQP message id or delivery tag, or the `id` field of a JSON Lines record.
     */
    id: string,
    /**
     * Name of the source (the `sources.<name>` key in fnmill.toml) it came from.
     */
    source: string,
    /**
     * The message key, if the message had one (Kafka key, AMQP routing key, JSON `key`).
     */
    key?: Uint8Array,
    /**
     * The message body, exactly as the broker delivered it.
     */
    payload: Uint8Array,
    /**
     * Message headers, in the order the broker delivered them.
     */
    headers: Array<Header>,
    /**
     * When the event was produced, in milliseconds since the Unix epoch, if the source knows.
     */
    timestampMs?: bigint,
    /**
     * Which attempt this is: 1 on first delivery, 2 on the first retry, and so on.
     */
    attempt: number,
  }
  /**
   * An event the function wants published.
   */
  export interface Output {
    /**
     * A destination *name* from the route's `destinations` table in fnmill.toml, such as
     * `valid`. The route maps it to a real topic, exchange or file; the function never sees
     * broker names. An unknown name fails the event with a `fatal` error.
     */
    destination: string,
    /**
     * Message key for the output (Kafka key / AMQP routing key), if any.
     */
    key?: Uint8Array,
    /**
     * Message body.
     */
    payload: Uint8Array,
    /**
     * Headers to set on the output message.
     */
    headers: Array<Header>,
  }
  /**
   * Why a function could not handle an event.
   */
  export type Error = ErrorRetryable | ErrorFatal;
  /**
   * A transient failure (a dependency timed out, a row is not there yet): fnmill retries
   * the same event later, with backoff, up to the route's `max_attempts`. Later events with
   * the same ordering key wait, so order is kept.
   */
  export interface ErrorRetryable {
    tag: 'retryable',
    val: string,
  }
  /**
   * The event can never succeed (malformed input, a broken invariant): fnmill sends the
   * original event to the route's dead-letter destination without retrying.
   */
  export interface ErrorFatal {
    tag: 'fatal',
    val: string,
  }
}
