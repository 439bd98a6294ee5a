"""Transitional: the stage entry point is `llmtrain.trainer.entry`; the CLI switches to it."""

from llmtrain.trainer.entry import generate, generate_cli, run_stage  # noqa: F401
