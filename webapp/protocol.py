"""Wire schemas shared by datasites and orchestrators (JSON; tensors travel as safetensors).

Pure pydantic: both apps import it, neither imports the other.
"""

import base64
import binascii

from pydantic import BaseModel, Field, field_validator

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
