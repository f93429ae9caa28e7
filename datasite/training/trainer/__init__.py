"""Local training at a datasite: the plan of one local round (:mod:`.plan`), the training
itself (:mod:`.local`, with its loops in :mod:`.loops` and the allowed frames in
:mod:`.frames`) and held-out evaluation (:mod:`.evaluation`)."""

from datasite.training.trainer.evaluation import evaluate
from datasite.training.trainer.local import LocalResult, train_local
from datasite.training.trainer.plan import LocalPlan

__all__ = ["LocalPlan", "LocalResult", "evaluate", "train_local"]
