"""Trainer side of llmtrain: runs stages on Ray Train; never imports kopf."""
