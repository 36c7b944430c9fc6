"""llmchat metrics service: the usage projection of the event log (schema `usage`), usage
reports over NATS request-reply (`usage.v1.rpc.<op>`), Prometheus business metrics, and the
replay and export commands."""
