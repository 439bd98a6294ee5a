"""Operator side of llmtrain: API types, builders, state machine and kopf handlers."""
