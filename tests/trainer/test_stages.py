"""Every stage type has a module of the `stages.Stage` shape (no training; a second)."""

from __future__ import annotations

import inspect

import pytest

from llmtrain.trainer import stages
from llmtrain.trainer.config import StageType

pytestmark = pytest.mark.trainer


@pytest.mark.parametrize("stage_type", list(StageType))
def test_stage_modules_have_the_stage_shape(stage_type: StageType) -> None:
    stage = stages.load(stage_type)
    assert isinstance(stage, stages.Stage), stage_type
    assert stage.PEFT_TASK_TYPE in ("CAUSAL_LM", "SEQ_CLS")
    assert isinstance(stage.APPLY_PEFT, bool)
    for name in ("prepare_data", "load_model", "build", "save"):
        expected = list(inspect.signature(getattr(stages.Stage, name)).parameters)[1:]
        assert list(inspect.signature(getattr(stage, name)).parameters) == expected, name


def test_stage_helpers_are_not_stage_types() -> None:
    for name in ("common", "rewards", "ppo_trainer"):
        with pytest.raises(ValueError, match="is not a valid StageType"):
            stages.load(name)
