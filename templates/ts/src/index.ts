// {{name}}: an fnmill function. An event whose payload is {"name": "Ada"} gives one output to
// `out`: {"message": "Hello, Ada!"} (the greeting comes from the `greeting` config key). A
// payload without a string `name` is `fatal`: fnmill dead-letters the event.
import { config, defineHandler, fatal, output, parseJson } from './fnmill.js';
import type { Event, Output } from './fnmill.js';

interface Request {
  name?: unknown;
}

export const handler = defineHandler((event: Event): Output[] => {
  const request = parseJson(event.payload) as Request | null;
  if (typeof request?.name !== 'string') {
    throw fatal('payload has no string `name`');
  }
  const reply = { message: greet(config('greeting', 'Hello'), request.name) };
  return [output('out', reply, { key: event.key })];
});

/** The business logic, kept apart from the bindings so it is easy to test. */
export function greet(greeting: string, name: string): string {
  return `${greeting}, ${name}!`;
}
