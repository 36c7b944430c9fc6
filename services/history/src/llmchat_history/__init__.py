"""llmchat history service: conversations and messages projected from the event log
(CHAT_EVENTS), model-written titles, search and export over NATS request-reply
(`history.v1.rpc.<op>`)."""
