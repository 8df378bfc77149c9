// Does what the payload (text) says, to test the host's limits and failure handling:
//   loop       runs forever
//   alloc      allocates 1 MiB buffers, keeping them all, without bound
//   alloc:N    allocates N MiB, then answers like echo
//   throw      throws a TypeError (not a function error: a trap)
//   fatal      throws fatal(...)      retryable  throws retryable(...)
//   sql        queries data source `db` (`select 1`)     kv  opens bucket `secrets`
//   log        logs at info and writes a line to stdout and one to stderr, then echoes
//   anything else: one output to `out` with the payload, the key, and a `greeting` header from
//   config (empty when unset).
import { bytes, config, defineHandler, fatal, kv, log, output, retryable, sql, text } from '../../../../sdk/js/fnmill.js';

export const handler = defineHandler((event) => {
  const command = text(event.payload);
  if (command === 'loop') {
    let n = 0;
    for (;;) n = (n + 1) | 0;
  }
  if (command.startsWith('alloc')) {
    const limit = command.includes(':') ? Number(command.split(':')[1]) : Infinity;
    const kept = [];
    while (kept.length < limit) kept.push(new Uint8Array(1 << 20).fill(kept.length & 0xff));
  }
  if (command === 'throw') throw new TypeError('thrown on purpose');
  if (command === 'fatal') throw fatal('fatal on purpose');
  if (command === 'retryable') throw retryable('retryable on purpose');
  if (command === 'sql') return [output('out', sql.query('db', 'select 1 as one'))];
  if (command === 'kv') return [output('out', kv.open('secrets').getText('k') ?? '')];
  if (command === 'log') {
    log.info('logged on purpose');
    console.log('stdout on purpose');
    console.error('stderr on purpose');
  }
  return [output('out', event.payload, { key: event.key, headers: [['greeting', bytes(config('greeting', ''))]] })];
});
