// Order validation and enrichment: pure logic, independent of the host. The same rules, numbers
// and messages as the Rust function (examples/quickstart/function/src/order.rs), so both write
// the same bytes for the same events.
import { float, parseJson, wasFloat } from '../../../../sdk/js/fnmill.js';

/** Currencies this shop accepts. */
export const CURRENCIES = ['EUR', 'USD', 'GBP'];

/** Tax rate used when the `tax_rate` config key is absent. */
export const DEFAULT_TAX_RATE = '0.20';

/** Value of `processed_by` on enriched orders. */
export const PROCESSED_BY = 'quickstart-orders';

/** Why an event cannot be processed at all; `message` reads like the Rust function's. */
export class ProcessError extends Error {
  constructor(kind, detail) {
    super(kind === 'malformed' ? `malformed order: ${detail}` : `bad config: ${detail}`);
    this.kind = kind;
  }
}

/**
 * Validates and, if valid, enriches one order payload (bytes). `taxRate` is the raw config
 * value. Returns `{ valid, orderId, total?, reasons?, body }` where `body` is the output JSON.
 */
export function process(payload, taxRate) {
  let fields;
  try {
    fields = parseJson(payload);
  } catch (e) {
    throw new ProcessError('malformed', e.message.replace(/^payload is not valid JSON: /, ''));
  }
  const order = checkOrder(fields);
  const reasons = validate(order);
  if (reasons.length > 0) {
    fields.reasons = reasons;
    return { valid: false, orderId: order.order_id, reasons, body: fields };
  }
  const rate = parseTaxRate(taxRate);
  const t = totals(order, rate);
  fields.item_count = t.itemCount;
  fields.subtotal = float(t.subtotal);
  fields.tax = float(t.tax);
  fields.total = float(t.total);
  fields.processed_by = PROCESSED_BY;
  return { valid: true, orderId: order.order_id, total: t.total, body: fields };
}

/** The fields an order must have, with their types; other fields are allowed and kept. */
function checkOrder(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ProcessError('malformed', 'expected an object');
  }
  for (const field of ['order_id', 'customer_id', 'currency']) {
    if (!(field in value)) throw new ProcessError('malformed', `missing field \`${field}\``);
    if (typeof value[field] !== 'string') throw new ProcessError('malformed', `\`${field}\` must be a string`);
  }
  if (!('items' in value)) throw new ProcessError('malformed', 'missing field `items`');
  if (!Array.isArray(value.items)) throw new ProcessError('malformed', '`items` must be an array');
  value.items.forEach((item, i) => {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) {
      throw new ProcessError('malformed', `item ${i} must be an object`);
    }
    if (typeof item.sku !== 'string') throw new ProcessError('malformed', `item ${i}: \`sku\` must be a string`);
    if (!Number.isSafeInteger(item.qty) || wasFloat(item, 'qty')) {
      throw new ProcessError('malformed', `item ${i}: \`qty\` must be an integer`);
    }
    if (typeof item.unit_price !== 'number') {
      throw new ProcessError('malformed', `item ${i}: \`unit_price\` must be a number`);
    }
  });
  return value;
}

/** Business rules; returns every violated rule, empty if the order is valid. */
export function validate(order) {
  const reasons = [];
  if (!CURRENCIES.includes(order.currency)) {
    reasons.push(`unknown currency ${JSON.stringify(order.currency)} (allowed: ${CURRENCIES.join(', ')})`);
  }
  if (order.items.length === 0) reasons.push('order has no items');
  order.items.forEach((item, i) => {
    if (item.qty <= 0) reasons.push(`item ${i} (${item.sku}): qty must be positive, got ${item.qty}`);
    if (item.unit_price < 0) {
      reasons.push(`item ${i} (${item.sku}): unit_price must not be negative, got ${item.unit_price}`);
    }
  });
  return reasons;
}

/** Totals of a valid order at `taxRate` (0.20 = 20 %), each rounded to 2 decimals. */
export function totals(order, taxRate) {
  const itemCount = order.items.reduce((n, i) => n + i.qty, 0);
  const subtotal = round2(order.items.reduce((s, i) => s + i.qty * i.unit_price, 0));
  const tax = round2(subtotal * taxRate);
  const total = round2(subtotal + tax);
  return { itemCount, subtotal, tax, total };
}

/** Parses the `tax_rate` config value (default DEFAULT_TAX_RATE), as Rust parses an f64. */
export function parseTaxRate(raw) {
  const text = raw ?? DEFAULT_TAX_RATE;
  const trimmed = text.trim();
  const rate = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(trimmed) ? Number(trimmed) : NaN;
  if (Number.isFinite(rate) && rate >= 0) return rate;
  throw new ProcessError('config', `tax_rate must be a non-negative decimal number such as "0.20", got ${JSON.stringify(text)}`);
}

/** Rounds to 2 decimals, half away from zero (as Rust's f64::round). */
export function round2(x) {
  return roundHalfAway(x * 100) / 100;
}

function roundHalfAway(v) {
  const a = Math.abs(v);
  const f = Math.floor(a);
  const r = a - f >= 0.5 ? f + 1 : f;
  return v < 0 ? -r : r;
}
