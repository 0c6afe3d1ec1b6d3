"""The exit codes of `moed` and `moectl`: one scheme for both tools (docs/cli.md).

| code | name        | meaning                                                                                   |
|------|-------------|-------------------------------------------------------------------------------------------|
| 0    | OK          | done                                                                                      |
| 1    | FAILED      | the request or operation failed (an error final, a corrupt store, a failed conversion)     |
| 2    | USAGE       | bad arguments, config or input, caught before anything started (a bad budget, not a store) |
| 3    | UNAVAILABLE | no daemon answers at the endpoint (moectl), or another daemon holds it (moed serve)        |
| 4    | BUSY        | the daemon's queue is full: retry later                                                    |
| 5    | TIMEOUT     | no reply within --timeout (or the daemon did not become ready within --wait)               |
| 130  | INTERRUPTED | Ctrl-C (a stream in progress is cancelled first)                                           |
| 141  | BROKEN_PIPE | stdout was closed early (`moectl status | head`): quietly, as other Unix tools end         |
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
UNAVAILABLE = 3
BUSY = 4
TIMEOUT = 5
INTERRUPTED = 130
BROKEN_PIPE = 141

SUMMARY = ("exit codes: 0 ok, 1 failed, 2 usage, 3 daemon unavailable, 4 busy, 5 timeout, 130 interrupted, "
           "141 output closed early")
