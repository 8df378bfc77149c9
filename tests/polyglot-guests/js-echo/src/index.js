// One output to `out` with the event's key, payload and headers unchanged: the benchmark
// baseline (no SDK, no host calls).
export const handler = {
  handle(event) {
    return [{ destination: 'out', key: event.key, payload: event.payload, headers: event.headers }];
  },
};
