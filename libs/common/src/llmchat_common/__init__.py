"""Shared pieces of the llmchat services: contracts, subjects, settings, messaging, logging."""
