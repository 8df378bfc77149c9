import assert from 'node:assert/strict';
import { test } from 'node:test';

import { handler } from '../src/index.js';
import { host } from './fnmill-host.js';

function event(payload) {
  const bytes = new TextEncoder().encode(JSON.stringify(payload));
  return { id: 'e1', source: 'test', key: new TextEncoder().encode('k'), payload: bytes, headers: [], attempt: 1 };
}

test('greets with the configured greeting', () => {
  host.reset({ config: { greeting: 'Hi' } });
  const outputs = handler.handle(event({ name: 'Ada' }));
  assert.equal(outputs.length, 1);
  assert.equal(outputs[0].destination, 'out');
  assert.equal(new TextDecoder().decode(outputs[0].payload), '{"message":"Hi, Ada!"}');
});

test('a payload without a name is fatal', () => {
  host.reset();
  assert.throws(() => handler.handle(event({ nom: 'Ada' })), (e) => e.payload?.tag === 'fatal');
});
