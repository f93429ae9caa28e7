"""Wire forms: every message survives JSON (masked input: header + raw bytes), bad input raises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privacy.secagg import (
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    ProtocolError,
    SecAggParams,
    UnmaskRequest,
    UnmaskResponse,
)

MESSAGES = [
    KeyAdvert("r", "a", b"\x01" * 32, b"\x02" * 32, b"\x03" * 64),
    EncryptedShare("r", "a", "b", b"\x00\xff" * 40),
    UnmaskRequest("r", ("a", "b"), ("c",)),
    UnmaskResponse("r", "a", {"a": 5, "b": 2**255 - 20}, {"c": 0}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_json_round_trip(msg: object) -> None:
    text = msg.to_json()
    json.loads(text)  # plain JSON, bytes as base64 strings
    assert type(msg).from_json(text) == msg


def test_masked_input_wire_forms() -> None:
    vec = np.array([0, 1, 2**32 - 1, 12345], np.uint32)
    msg = MaskedInput("r", "a", vec, b"\x07" * 32)
    json.dumps(msg.header())
    assert bytes(msg.body()) == vec.astype("<u4").tobytes()
    for back in (
        MaskedInput.from_wire(msg.header(), bytes(msg.body())),
        MaskedInput.from_bytes(msg.to_bytes()),
    ):
        assert np.array_equal(back.vector, vec)
        assert back.header() == msg.header()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"type": "secagg/share"}',
        '{"type": "secagg/advert", "round_id": "r", "site_id": "a", "c_pk": "!!", '
        '"s_pk": "", "signature": ""}',
        '{"type": "secagg/advert", "round_id": 3, "site_id": "a", "c_pk": "", "s_pk": "", "signature": ""}',
    ],
)
def test_malformed_json_raises_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError):
        KeyAdvert.from_json(text)


def test_malformed_unmask_messages() -> None:
    good = MESSAGES[3].to_dict()
    too_big = {**good, "b_shares": {"a": "/" * 43 + "="}}  # 2^256 - 1: not a field element
    with pytest.raises(ProtocolError):
        UnmaskResponse.from_dict(too_big)
    with pytest.raises(ProtocolError, match="twice"):
        UnmaskRequest.from_dict({**MESSAGES[2].to_dict(), "dropped": ["c", "c"]})
    with pytest.raises(ProtocolError, match="truncated"):
        MaskedInput.from_bytes(b"\x00\x00\x01\x00{}")


def test_params_round_trip() -> None:
    p = SecAggParams(("b", "a", "c"), 10, 0.5, neighbours=2, graph_seed="g")
    assert p.sites == ("a", "b", "c") and p.threshold == 2
    assert SecAggParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ProtocolError):
        SecAggParams.from_dict({"sites": ["a"]})
