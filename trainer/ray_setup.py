"""Setup run in every Ray worker process of a stage (Ray's `worker_process_setup_hook`).

    ray.init(runtime_env={"worker_process_setup_hook": "llmtrain.trainer.ray_setup.quiet"})

Kept free of heavy imports: Ray runs it at the start of each actor and task process.
"""

from __future__ import annotations

import logging

# Ray Train internals that warn on every poll about features a stage does not use: the
# placement-group cleaner needs the State API (the dashboard, which we do not start), and
# the autoscaling coordinator only matters under the Ray autoscaler (our gangs are fixed).
NOISY = (
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
)


def quiet() -> None:
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
