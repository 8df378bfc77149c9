"""Does what the payload (text) says, to test the host's limits and failure handling:
  loop       runs forever
  alloc      allocates 1 MiB buffers, keeping them all, without bound
  alloc:N    allocates N MiB, then answers like echo
  throw      raises a RuntimeError (not a function error: a trap)
  fatal      raises fatal(...)      retryable  raises retryable(...)
  sql        queries data source `db` (`select 1`)     kv  opens bucket `secrets`
  log        logs at info and prints a line to stdout and one to stderr, then echoes
  anything else: one output to `out` with the payload, the key, and a `greeting` header from
  config (empty when unset)."""

import sys

from fnmill_sdk import Event, Output, config, fatal, kv, log, output, retryable, sql, text
from wit_world import exports


class Handler(exports.Handler):
    def handle(self, event: Event) -> list[Output]:
        command = text(event.payload)
        if command == "loop":
            n = 0
            while True:
                n += 1
        if command.startswith("alloc"):
            limit = int(command.split(":")[1]) if ":" in command else None
            kept = []
            while limit is None or len(kept) < limit:
                kept.append(bytearray([len(kept) & 0xFF]) * (1 << 20))
        if command == "throw":
            raise RuntimeError("raised on purpose")
        if command == "fatal":
            raise fatal("fatal on purpose")
        if command == "retryable":
            raise retryable("retryable on purpose")
        if command == "sql":
            return [output("out", sql.query("db", "select 1 as one"))]
        if command == "kv":
            return [output("out", kv.open("secrets").get_text("k") or "")]
        if command == "log":
            log.info("logged on purpose")
            print("stdout on purpose", flush=True)
            print("stderr on purpose", file=sys.stderr, flush=True)
        return [output("out", event.payload, key=event.key, headers=[("greeting", config("greeting", ""))])]
