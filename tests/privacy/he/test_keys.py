"""The `he` mode's keys: CKKS parameters, secret and public contexts, the key ceremony."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy import he
from tests.privacy.he.federation import SITES, STUDY, Federation, he_aggregate, weighted_updates

# ---------------------------------------------------------------- parameters, contexts


def test_parameters_and_public_context(fed: Federation) -> None:
    assert (he.POLY_MODULUS_DEGREE, he.COEFF_MOD_BIT_SIZES, he.SLOTS) == (8192, (60, 60), 4096)
    assert he.GLOBAL_SCALE == 2.0**40 and he.WRAP_BOUND == 2.0**19
    assert he.MAX_CONTRIBUTIONS * he.MAX_ABS_VALUE <= he.WRAP_BOUND / 2
    assert he.default_flood_std() == pytest.approx(2**6 * math.sqrt(8192) / 2**40)
    public = fed.ceremony.public_context
    assert public == he.public_context_bytes() == fed.secrets["beta"].public_bytes()
    ctx = ts.context_from(public)
    assert ctx.is_public() and not ctx.is_private()
    assert len(public) < 200 < len(fed.secrets["alpha"].data)


def test_public_context_cannot_decrypt(fed: Federation) -> None:
    secret = fed.secrets["beta"]
    ciphertext = ts.ckks_vector(secret.context, [1.5, -2.0, 3.25]).serialize()
    public = ts.context_from(fed.ceremony.public_context)
    loaded = ts.ckks_vector_from(public, ciphertext)  # the orchestrator can load and add ...
    loaded.add_(ts.ckks_vector_from(public, ciphertext))
    with pytest.raises(ValueError, match="secret"):  # ... but not decrypt
        loaded.decrypt()
    with pytest.raises(ValueError):
        ts.ckks_vector(public, [1.0])  # nor encrypt: there is no public key at all
    # the same holds through the library
    with pytest.raises(he.HEError, match="no secret key"):
        he.SecretContext(fed.ceremony.public_context)
    frames = he_aggregate(fed, *weighted_updates(10))
    with pytest.raises(he.HEError, match="no secret key"):
        he.decrypt_stream(fed.ceremony.public_context, frames, 10)
    # and the decryption with the real key still works
    assert np.allclose(np.asarray(loaded.decrypt(secret.context.secret_key())), [3.0, -4.0, 6.5])


def test_secret_context_rejects_other_parameters() -> None:
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    other.global_scale = 2**40
    with pytest.raises(he.HEError, match="parameters differ"):
        he.SecretContext(other.serialize(save_secret_key=True))
    with pytest.raises(he.HEError, match="not a TenSEAL context"):
        he.SecretContext(b"\x00garbage")


# ---------------------------------------------------------------- key ceremony


def test_key_ceremony_round_trip(fed: Federation) -> None:
    keys = {s.key_id for s in fed.secrets.values()}
    assert keys == {fed.ceremony.key_id}
    assert len({s.data for s in fed.secrets.values()}) == 1
    assert set(fed.ceremony.envelopes) == {"beta", "gamma"}
    assert fed.secrets["alpha"].data not in b"".join(fed.ceremony.envelopes.values())
    assert "key_id=" in repr(fed.secrets["beta"]) and len(repr(fed.secrets["beta"])) < 80
    n = 3000
    vectors, weights = weighted_updates(n, seed=3)
    frames = he_aggregate(fed, vectors, weights)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    for site in SITES:  # every key holder can decrypt the aggregate
        got = he.decrypt_stream(fed.secrets[site], frames, n, flood_std=0.0)
        assert np.max(np.abs(got - want)) < 1e-8


def _open(fed: Federation, envelope: bytes, **overrides) -> he.SecretContext:
    kwargs = dict(
        study_id=STUDY,
        sender="alpha",
        recipient="beta",
        recipient_private_key=fed.agreement["beta"],
        sender_public_key=fed.signing["alpha"].public_key(),
    )
    kwargs.update(overrides)
    return he.open_secret_context(envelope, **kwargs)


def test_envelope_accepts_raw_public_key_bytes(fed: Federation) -> None:
    raw = fed.signing["alpha"].public_key().public_bytes_raw()
    assert _open(fed, fed.ceremony.envelopes["beta"], sender_public_key=raw).key_id == (
        fed.ceremony.key_id
    )


@pytest.mark.parametrize("where", ["magic", "header", "ciphertext", "signature", "truncate"])
def test_tampered_envelope_is_rejected(fed: Federation, where: str) -> None:
    env = bytearray(fed.ceremony.envelopes["beta"])
    header_len = struct.unpack_from("<I", env, 8)[0]
    position = {
        "magic": 0,
        "header": 12 + header_len // 2,
        "ciphertext": 12 + header_len + 1000,
        "signature": len(env) - 10,
    }
    if where == "truncate":
        env = env[:-1]
    else:
        env[position[where]] ^= 0x01
    with pytest.raises(he.HEError):
        _open(fed, bytes(env))


def test_envelope_for_another_recipient_is_rejected(fed: Federation) -> None:
    for_beta = fed.ceremony.envelopes["beta"]
    with pytest.raises(he.HEError, match="recipient='beta'"):
        _open(fed, for_beta, recipient="gamma", recipient_private_key=fed.agreement["gamma"])
    with pytest.raises(he.HEError, match="another X25519 key"):  # right name, wrong key
        _open(fed, for_beta, recipient_private_key=fed.agreement["gamma"])
    with pytest.raises(he.HEError, match="study_id"):
        _open(fed, for_beta, study_id="another-study")
    with pytest.raises(he.HEError):  # claimed sender must match the signature key and header
        _open(fed, for_beta, sender="gamma", sender_public_key=fed.signing["gamma"].public_key())
    with pytest.raises(he.HEError, match="key id"):
        _open(fed, for_beta, key_id=b"\x00" * he.KEY_ID_BYTES)


def test_forged_envelope_is_rejected(fed: Federation) -> None:
    """The relaying orchestrator substitutes its own key, signed with its own Ed25519 key."""
    mallory = Ed25519PrivateKey.generate()
    forged = he.seal_secret_context(
        he.SecretContext.generate(),
        study_id=STUDY,
        sender="alpha",
        recipient="beta",
        recipient_public_key=fed.agreement["beta"].public_key(),
        signing_key=mallory,
    )
    with pytest.raises(he.HEError, match="signature"):
        _open(fed, forged)
    # re-signing the genuine envelope's body does not help either
    body = fed.ceremony.envelopes["beta"][:-64]
    resigned = body + mallory.sign(b"fedsilo/he/envelope/v1\x00" + body)
    with pytest.raises(he.HEError, match="signature"):
        _open(fed, resigned)
    # only the genuine envelope opens
    assert _open(fed, fed.ceremony.envelopes["beta"]).key_id == fed.ceremony.key_id


def test_key_ceremony_input_checks(fed: Federation) -> None:
    with pytest.raises(he.HEError, match="key holder"):
        he.create_key_ceremony(
            STUDY, "alpha", fed.signing["alpha"], {"alpha": fed.agreement["alpha"].public_key()}
        )
    with pytest.raises(he.HEError, match="32 bytes"):
        he.create_key_ceremony(STUDY, "alpha", fed.signing["alpha"], {"beta": b"short"})
    with pytest.raises(he.HEError, match="study_id"):
        he.create_key_ceremony("", "alpha", fed.signing["alpha"], {})


def test_recipient_key_statement_binds_study_site_and_key(fed: Federation) -> None:
    beta_kex = fed.agreement["beta"].public_key()
    statement = he.sign_recipient_key(STUDY, "beta", beta_kex, fed.signing["beta"])
    pinned = fed.signing["beta"].public_key()
    raw = he.verify_recipient_key(statement, study_id=STUDY, site="beta", signer_public_key=pinned)
    assert raw == beta_kex.public_bytes_raw()
    with pytest.raises(he.HEError, match="expected 'gamma'"):
        he.verify_recipient_key(statement, study_id=STUDY, site="gamma", signer_public_key=pinned)
    with pytest.raises(he.HEError, match="for 'other'"):
        he.verify_recipient_key(statement, study_id="other", site="beta", signer_public_key=pinned)
    # the relaying orchestrator swaps in its own X25519 key: the signature no longer verifies
    swapped = {**statement, "kex_key": X25519PrivateKey.generate().public_key().public_bytes_raw().hex()}
    with pytest.raises(he.HEError, match="does not verify"):
        he.verify_recipient_key(swapped, study_id=STUDY, site="beta", signer_public_key=pinned)
    forged = he.sign_recipient_key(STUDY, "beta", beta_kex, Ed25519PrivateKey.generate())
    with pytest.raises(he.HEError, match="does not verify"):
        he.verify_recipient_key(forged, study_id=STUDY, site="beta", signer_public_key=pinned)
    with pytest.raises(he.HEError, match="malformed"):
        he.verify_recipient_key({"kex_key": "zz"}, study_id=STUDY, site="beta", signer_public_key=pinned)
