// Orders enrichment in JavaScript, the same contract as examples/orders-enrich/function: an
// order {"order_id", "customer_id", ...}; an event id seen before (Redis bucket `dedup`, first
// attempt only) → no outputs; otherwise looks up the customer in data source `orders_db` and
// outputs the order with a `customer` object to `enriched`, or to `unknown_customer` if there
// is no such customer; malformed order or SQL error → `fatal`; database or Redis unavailable →
// `retryable` (the SDK's SqlError and KvError carry that class when they escape `handle`).
import { defineHandler, fatal, kv, log, output, parseJson, sql, wasFloat } from '../../../../sdk/js/fnmill.js';

/** The customer fields the lookup returns, in column order. */
export const CUSTOMER_QUERY = 'select name, email, tier from customers where id = $1';

/** Parses an order and says which customer to look up. */
export function plan(payload) {
  let order;
  try {
    order = parseJson(payload);
  } catch (e) {
    throw fatal(`order is not JSON: ${e.message.replace(/^payload is not valid JSON: /, '')}`);
  }
  if (order === null || typeof order !== 'object' || Array.isArray(order)) {
    throw fatal('order is not a JSON object');
  }
  const customerId = order.customer_id;
  if (!Number.isSafeInteger(customerId) || wasFloat(order, 'customer_id')) {
    throw fatal('order has no integer `customer_id`');
  }
  return { customerId, order };
}

export const handler = defineHandler((event) => {
  const { customerId, order } = plan(event.payload);
  const dedup = kv.open('dedup');
  // Seen before (a redelivery after a crash or a producer retry)? A retry of this very event
  // (attempt > 1) is not a duplicate: the earlier attempt failed.
  if (event.attempt === 1 && dedup.exists(event.id)) {
    log.info(`duplicate event ${event.id}; skipped`);
    return [];
  }
  const [customer] = sql.query('orders_db', CUSTOMER_QUERY, [customerId]);
  let body = event.payload;
  if (customer !== undefined) {
    // Added to the parsed order itself (not a copy), so its numbers are written back as they came.
    order.customer = { name: customer.name, email: customer.email, tier: customer.tier };
    body = order;
  }
  // Marked only once the work succeeded, so a failed attempt is never skipped.
  dedup.set(event.id, '1');
  const destination = customer === undefined ? 'unknown_customer' : 'enriched';
  return [output(destination, body, { key: event.key, headers: { 'content-type': 'application/json' } })];
});
