"""Benchmarks: one command each, always against a named baseline measured in the same run.

python -m benchmarks                    # all of them
python -m benchmarks.sft_throughput     # our SFT stage vs TRL's SFTTrainer
"""
