"""The `llmtrain` command line (`main.py`): one entry point for users, pods and the operator.

It imports the operator and the trainer lazily, inside each command, so the operator image
(no torch) runs every command but the trainer's; neither side imports this package.
"""
