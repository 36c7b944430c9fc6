"""The launcher: real processes (nats-server, Postgres, Redis, the services) on 127.0.0.1, kept
up by a supervisor, and the NATS permission matrix they run under.

`make run` (infra/run.py), `make cluster` and the test suite all start the platform through
it, so what the tests exercise is what a user runs. Helpers only tests need live in
`llmchat_common.testing`.
"""
