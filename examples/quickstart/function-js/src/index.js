// The quickstart function in JavaScript: validates an order (JSON); malformed → `fatal`, invalid
// → `invalid` with `reasons`, valid → `valid` enriched with `item_count`, `subtotal`, `tax`,
// `total` (config `tax_rate`, default 0.20). Same contract as examples/quickstart/function.
import { config, defineHandler, fatal, log, output } from '../../../../sdk/js/fnmill.js';
import { ProcessError, process } from './order.js';

export const handler = defineHandler((event) => {
  let outcome;
  try {
    outcome = process(event.payload, config('tax_rate'));
  } catch (e) {
    if (!(e instanceof ProcessError)) throw e;
    log.debug(`event ${event.id}: ${e.message}`);
    // Neither a malformed order nor a bad `tax_rate` gets better by retrying.
    throw fatal(e.message);
  }
  if (outcome.valid) {
    log.debug(`event ${event.id}: order ${outcome.orderId} valid, total ${outcome.total.toFixed(2)}`);
  } else {
    log.debug(`event ${event.id}: order ${outcome.orderId} invalid: ${outcome.reasons.join('; ')}`);
  }
  // Keep the event's headers (e.g. `traceparent`), but the body is now our JSON.
  const headers = event.headers.filter((h) => h.name.toLowerCase() !== 'content-type');
  headers.push({ name: 'content-type', value: new TextEncoder().encode('application/json') });
  return [output(outcome.valid ? 'valid' : 'invalid', outcome.body, { key: event.key, headers })];
});
