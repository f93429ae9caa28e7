"""A study already running its first round, for tests that drive rounds without approvals."""

from common.protocol import Plan
from orchestrator import checkpoints
from orchestrator.models import Study
from orchestrator.tensors import Arrays, manifest_of
from privacy.strategies import ServerState


def running_study(researcher, plan: Plan | dict, weights: Arrays, plan_sha256: str = "1" * 64) -> Study:
    """A study in round 1 of ``plan`` whose initial ``weights`` are checkpointed as round 0."""
    plan_dict = plan.model_dump() if isinstance(plan, Plan) else plan
    study = Study.objects.create(
        title="t",
        researcher=researcher,
        code={},
        code_sha256="0" * 64,
        plan=plan_dict,
        plan_sha256=plan_sha256,
        status="running",
        current_round=1,
        manifest=manifest_of(weights),
    )
    checkpoints.save(study.pk, 0, weights, ServerState(strategy=plan_dict.get("strategy", "fedavg")))
    return study
