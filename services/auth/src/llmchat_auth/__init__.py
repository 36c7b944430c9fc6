"""llmchat auth service: users, password login, EdDSA access tokens with a JWKS, refresh
tokens, API keys and roles, over NATS request-reply (`auth.v1.rpc.<op>`)."""
