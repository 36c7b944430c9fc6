"""Helpers that start real processes (nats-server, Postgres, Redis, services) on 127.0.0.1.

The same code serves `make run` (infra/run.py) and the test suite, so what the tests exercise
is what a user runs.
"""
