"""Wire schemas shared by datasites and orchestrators (JSON; tensors travel as safetensors).

Pure pydantic: both apps import it, neither imports the other.
"""

import base64
import binascii
import hashlib
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from common.signing import canonical_json

NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


def _raw_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be base64") from exc
    if len(raw) != 32:
        raise ValueError("must be a 32-byte raw public key")
    return value


class NodeInfo(BaseModel):
    """What a node tells its peers about itself."""

    name: str = Field(pattern=NODE_NAME_PATTERN)
    role: str = Field(pattern=r"^(datasite|orchestrator)$")
    url: str = Field(max_length=500, pattern=r"^https?://")
    signing_key: str
    kex_key: str

    _check_signing = field_validator("signing_key")(_raw_key)
    _check_kex = field_validator("kex_key")(_raw_key)


class JoinRequest(BaseModel):
    """A datasite asks to join; ``signature`` proves it holds its signing key."""

    node: NodeInfo
    callback_token: str = Field(min_length=20, max_length=200)
    signature: str


class JoinResponse(BaseModel):
    orchestrator: NodeInfo


class Heartbeat(BaseModel):
    name: str = Field(pattern=NODE_NAME_PATTERN)
    status: dict = Field(default_factory=dict)


class DatasiteOut(BaseModel):
    name: str
    url: str
    status: str
    joined_at: str | None
    last_heartbeat: str | None
    signing_key: str
    kex_key: str


# ----------------------------------------------------------------------------- studies

PURPOSE_PATTERN = r"^[a-z][a-z0-9-]{1,62}$"


class Pinned(BaseModel):
    """A model whose canonical JSON is hashed: defaults are validated like given values, so
    ``1800`` and ``1800.0`` never give two hashes for one plan."""

    model_config = ConfigDict(validate_default=True, extra="forbid")


MODULE_SOURCE_MAX_BYTES = 200_000
_RECIPE_FIELDS = ("kind", "recipe", "config")
_MODULE_FIELDS = ("kind", "source", "entry", "base_recipe", "base_config", "config")
_MODULE_DEFAULTS = {"entry": "build_policy", "base_recipe": "act-small", "base_config": {}}


class CodeBundle(Pinned):
    """The training code a data owner approves, of one of two kinds:

    - ``kind="recipe"`` (default): ``recipe`` (a recipe name) and its ``config``.
    - ``kind="module"``: Python ``source`` (at most 200 kB of UTF-8) defining the entry point
      ``entry`` (default ``build_policy``), which receives the built ``base_recipe`` (default
      ``act-small``, configured by ``base_config``) and the JSON ``config``; see
      :mod:`datasite.training.modules` for the contract.

    Only the fields of its kind are serialized, so a recipe bundle's canonical JSON (and
    SHA-256, see :func:`bundle_sha256`) is exactly ``{"kind", "recipe", "config"}``.
    """

    kind: str = Field(default="recipe", pattern=r"^(recipe|module)$")
    recipe: str | None = Field(default=None, min_length=1, max_length=64)
    source: str | None = Field(default=None, min_length=1, max_length=MODULE_SOURCE_MAX_BYTES)
    entry: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    base_recipe: str | None = Field(default=None, min_length=1, max_length=64)
    base_config: dict | None = None
    config: dict = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _module_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "module":
            return {**_MODULE_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "CodeBundle":
        own = _MODULE_FIELDS if self.kind == "module" else _RECIPE_FIELDS
        stray = [f for f in _MODULE_FIELDS + _RECIPE_FIELDS if f not in own and getattr(self, f) is not None]
        if stray:
            raise ValueError(f"field(s) {stray} do not belong to a {self.kind!r} bundle")
        missing = [f for f in own if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind!r} bundle needs {missing}")
        if self.source is not None and len(self.source.encode()) > MODULE_SOURCE_MAX_BYTES:
            raise ValueError(f"module source exceeds {MODULE_SOURCE_MAX_BYTES} bytes")
        return self

    @model_serializer(mode="wrap")
    def _canonical(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        own = _MODULE_FIELDS if self.kind == "module" else _RECIPE_FIELDS
        return {k: v for k, v in handler(self).items() if k in own}


class DPPlan(Pinned):
    """Differential privacy at each site: the privacy unit, noise, clip and target."""

    enabled: bool = True
    unit: str = Field(default="episode", pattern=r"^(episode|frame)$")
    noise_multiplier: float = Field(default=1.0, ge=0, le=100)
    clip_norm: float = Field(default=1.0, gt=0, le=1e6)
    frames_per_episode: int = Field(default=4, ge=1, le=1000)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class SecurePlan(Pinned):
    """Secure-aggregation settings (``secagg`` and ``he`` modes; see :mod:`privacy.secure_vector`).

    ``clip``: each coordinate of a site's pre-weighted update is clipped to [-clip, clip]
    before it is quantized into the ring or encrypted (values beyond are clipped, the count
    is reported; ``he`` needs clip <= 8192).
    ``threshold``: Shamir threshold t (default ⌊n/2⌋+1 of the round's n sites); up to n−t
    sites may drop after sharing keys. ``max_weight``: a site's example count is clipped to
    this public bound and divided by it, so that pre-weighted updates stay in range; set it
    near the largest site's training frames (smaller gives finer quantization).
    """

    clip: float = Field(default=1.0, gt=0, le=1e6)
    threshold: int | None = Field(default=None, ge=2, le=10_000)
    max_weight: float = Field(default=100_000.0, ge=1, le=1e12)


class RobustPlan(Pinned):
    """Byzantine-robust aggregation, ``plain`` mode only (see :mod:`privacy.robust`).

    ``method``: ``none`` (the strategy's weighted mean), ``krum``, ``multikrum``,
    ``trimmed_mean`` or ``median`` (coordinate-wise). ``f``: the Byzantine sites a round
    tolerates (the trimmed mean drops the f largest and f smallest values per coordinate;
    Krum needs n ≥ 2f+3 sites, the others n ≥ 2f+1). ``multikrum_m``: how many best-scored
    updates Multi-Krum averages (default n − f). Sites count equally, not by example count.
    The plan serializes this only when ``method`` is not ``none``, so plans without it keep
    their hashes.
    """

    method: str = Field(default="none", pattern=r"^(none|krum|multikrum|trimmed_mean|median)$")
    f: int = Field(default=0, ge=0, le=1000)
    multikrum_m: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _consistent(self) -> "RobustPlan":
        if self.method == "none" and (self.f or self.multikrum_m is not None):
            raise ValueError("f and multikrum_m need a robust method")
        if self.multikrum_m is not None and self.method != "multikrum":
            raise ValueError("multikrum_m is a multikrum setting")
        if self.method == "trimmed_mean" and self.f == 0:
            raise ValueError("trimmed_mean with f=0 trims nothing: set f >= 1")
        return self

    def describe(self) -> str:
        """One line for people reviewing the plan."""
        if self.method == "none":
            return "none: the strategy's weighted mean of all updates"
        f, m = self.f, self.multikrum_m or "n − f"
        rule = {
            "krum": "Krum: keeps the one update closest to the others",
            "multikrum": f"Multi-Krum: the mean of the {m} updates closest to the others",
            "trimmed_mean": f"coordinate-wise trimmed mean without the {f} largest and {f} smallest values",
            "median": "coordinate-wise median",
        }[self.method]
        return f"{rule}; tolerates {f} Byzantine site(s) per round, each site counting once"


class Plan(Pinned):
    """Everything about a study that a data owner approves, besides the code."""

    rounds: int = Field(ge=1, le=10_000)
    local_steps: int = Field(default=10, ge=1, le=1_000_000)
    batch_size: int = Field(default=8, ge=1, le=100_000)
    lr: float = Field(default=1e-4, gt=0, le=10)
    mu: float = Field(default=0.0, ge=0, le=1e6)
    strategy: str = Field(default="fedavg", pattern=r"^(fedavg|fedprox|fedavgm|fedadam|fedyogi|fednova)$")
    server: dict = Field(default_factory=dict, description="server-side strategy hyperparameters")
    dp: DPPlan = Field(default_factory=DPPlan)
    # a round mode's name: each role checks it against its registry (orchestrator.modes,
    # datasite.modes), so a new mode needs no change here
    aggregation: str = Field(default="secagg", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    min_sites: int = Field(default=1, ge=1)
    fraction: float = Field(default=1.0, gt=0, le=1)
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)
    purpose: str = Field(default="policy-training", pattern=PURPOSE_PATTERN)
    seed: int = Field(default=0, ge=0, lt=2**31)
    round_timeout_s: float = Field(default=1800, gt=0, le=7 * 86400)
    secure: SecurePlan = Field(default_factory=SecurePlan)  # used by the secagg and he modes
    # plain mode only; left out of the canonical JSON (so of the hash) while method is "none"
    robust: RobustPlan = Field(default_factory=RobustPlan, exclude_if=lambda r: r.method == "none")


class CodeRequestIn(BaseModel):
    """What the orchestrator sends a datasite for review."""

    study: str = Field(pattern=r"^[0-9a-f]{32}$")
    version: int = Field(ge=1)
    title: str = Field(min_length=1, max_length=200)
    researcher: str = Field(max_length=150)
    code: CodeBundle
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plan: Plan
    datasets: list[str] = Field(min_length=1, max_length=50)
    sites: list[str] = Field(min_length=1)
    site_keys: dict[str, str] = Field(
        default_factory=dict, description="site name → base64 Ed25519 key, relayed for secure aggregation"
    )


class CodeRequestOut(BaseModel):
    study: str
    version: int
    status: str
    code_sha256: str
    reason: str
    decided_by: str | None
    decided_at: str | None
    projected_epsilon: dict[str, float]
    episodes: dict[str, int] = Field(default_factory=dict, description="training episodes per dataset")


class Decision(BaseModel):
    """A data owner's decision, with the code hash they saw (refused if it changed since)."""

    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plan_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    reason: str = Field(default="", max_length=2000)


class RoundAssignment(BaseModel):
    """A round's instructions; the global weights travel beside it as safetensors."""

    study: str = Field(pattern=r"^[0-9a-f]{32}$")
    round: int = Field(ge=0)
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    plan_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    norm_stats: dict = Field(default_factory=dict)
    eval_only: bool = False


class RoundUpload(BaseModel):
    """What a site reports with its update (the update travels beside it as safetensors)."""

    study: str = Field(pattern=r"^[0-9a-f]{32}$")
    round: int = Field(ge=0)
    site: str = Field(pattern=NODE_NAME_PATTERN)
    num_examples: int = Field(ge=0)
    local_steps: int = Field(ge=0)
    metrics: dict = Field(default_factory=dict)
    error: str = Field(default="", max_length=2000, description="set when the site could not run the round")


def sha256_json(obj: object) -> str:
    """SHA-256 of an object's canonical JSON: how code bundles and plans are pinned."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def bundle_sha256(bundle: CodeBundle) -> str:
    return sha256_json(bundle.model_dump())


def plan_sha256(plan: Plan) -> str:
    return sha256_json(plan.model_dump())
