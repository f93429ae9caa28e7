"""The `he` aggregation mode: CKKS (TenSEAL 0.3) sums of pre-weighted model updates.

A pure library (numpy, tenseal, `cryptography`; no Django, no app imports).

Flow for one study. A key-holder datasite runs `create_key_ceremony`: it makes the CKKS
key, gives the orchestrator a `KeyCeremony` (public context, key id, one sealed envelope
per other datasite) and keeps its own `SecretContext`. The orchestrator relays each
envelope; the datasite opens it with `open_secret_context`. Each round, every site calls
`encrypt_stream(secret, update, weight=w_i)` and uploads the frames one by one; the
orchestrator feeds them to a `CiphertextAccumulator` (public context only) and sends the
frames of `export()` to one datasite, whose `decrypt_stream` returns Σ w_i·update_i.
A server that must survive restarts keeps each site's chunks on disk instead (validated
by `check_contribution`) and, once the round's contributors are fixed, builds each
aggregate frame with `sum_contributions` (see `orchestrator.modes.he`).

Parameters (fixed; `context.py`)
- Ring degree N = 8192, coefficient moduli [60, 60] bits, scale Δ = 2^40, 4096 slots
  per ciphertext. Aggregation is additions only: no multiplication, so no rescaling and
  no level to spend; one 60-bit data prime carries the values. The second prime is the
  special prime SEAL reserves for key switching (TenSEAL refuses a single prime); it
  appears in the secret key only, never in a ciphertext. [60, 40, 60] was measured and
  rejected: 57 instead of 32 bytes per value and 1.3-1.7x slower, for a level never used.
- Security: the HE standard (Albrecht et al., 2018; ternary secret, σ = 3.2) allows
  log q <= 218 / 152 / 118 bits at N = 8192 for 128 / 192 / 256-bit classical security;
  log q = 120 gives at least 192-bit security; SEAL checks at least 128.
- Range: decryption is exact while |Δ·x| < q/2, i.e. |x| < 2^19 (`WRAP_BOUND`); past
  it values wrap silently. Sites pre-multiply by their normalized weight w_i, which keeps
  the sum inside the sites' own range; `encrypt_stream` refuses |w_i·x| > 2^13
  (`MAX_ABS_VALUE`) and the accumulator takes at most 32 contributions per chunk
  (`MAX_CONTRIBUTIONS`), so |sum| <= 2^18 even with unnormalized weights.
- Precision: absolute error ~1e-9 (2e-9 max seen) before the decryption noise flood
  (below), ~5.3e-9 std after it.
- Size: a ciphertext is 2 polynomials x 8192 coefficients x 8 bytes = 128 KiB for 4096
  values, 32 bytes per value (SEAL's zstd pass gains nothing on uniformly random
  coefficients); headers add ~0.1 %, a last partly filled ciphertext a little more.
  Sites upload SEAL's seeded form (`encrypt_stream(seeded=True)`, the default): the
  second polynomial of a fresh symmetric ciphertext is uniform, so it travels as its
  64-byte PRNG seed: 16.06 B/value measured at 1e7 values (32.04 with `seeded=False`).
  The server re-expands the seed when it loads a part (~35 ns per value and site on a
  2-core VM, 1.8x the load-and-add cost); sums, and so aggregate downloads, stay 32.04.
- Cost (same VM, 1e7 values): encryption ~310 ns/value on one core, ~80 % of it inside
  SEAL (encode, encrypt, zstd serialization); `encrypt_stream(workers=k)` spreads chunks
  over k processes (SEAL holds the GIL; a pool start is ~0.2 s): 2 workers, 210 ns/value.
- Secret-key (symmetric) encryption. Every site that encrypts holds the secret key
  anyway, so sites encrypt with it: 2x faster than SEAL's public-key encryption (which
  works at the key level and then drops the special prime) and 10x less noise. There is
  no public key at all: the orchestrator's "public context" is `serialize(
  save_secret_key=False)` = the parameters and scale (84 bytes), enough to load and add
  ciphertexts and useless for decryption. The key is named by `key_id` (16 bytes of
  SHA-256 over the secret context), carried in every frame header and in `KeyCeremony`.

Streaming and memory. Vectors travel in frames of `chunk_values` values (default 262,144,
about 4 MiB seeded, 8 MiB full-size; `frame.py` documents the frame). Sites encrypt one
chunk at a time; the accumulator adds each chunk into one running ciphertext per 4096
values, so it holds one model's ciphertexts (32 B/value: 3.2 GB at 1e8 parameters)
whatever the number of sites, plus the chunk in hand; decryption fills a float64 vector
chunk by chunk.

Trust model (read before enabling this mode)
- TenSEAL has no threshold or multi-key decryption: every participating datasite holds
  the whole secret key and could decrypt any single site's ciphertext it got hold of.
  The orchestrator must therefore never forward an individual ciphertext to a site, only
  `CiphertextAccumulator.export()` frames, and uploads must travel over TLS.
- What this leaves: sites trust the orchestrator not to collude with any key-holding
  site, and (beyond honest-but-curious) not to present one site's ciphertext as an
  aggregate for decryption: the decrypting site cannot tell them apart (the header's
  contributor count, checked by `decrypt_stream`, only catches mistakes). The
  orchestrator alone, following the protocol, learns only the (noised) weighted sum.
  Against a malicious orchestrator use `secagg`, or threshold CKKS, which OpenFHE offers
  (each site holds a key share; decryption needs partial decryptions from t sites).
- Ciphertexts are malleable: a site or the orchestrator can shift the sum undetectably.
  HE gives confidentiality only; authenticity of uploads comes from the transport.
- Key ceremony (`ceremony.py`): envelopes are X25519 + HKDF-SHA256 + AES-256-GCM bound to
  study, sender, recipient and key id, and signed by the key holder's long-term Ed25519
  key, so the relaying orchestrator can neither read nor substitute them, provided each
  site verifies with the key holder's Ed25519 key from its own pinned peer registry.

Decryption leaks (Li & Micciancio, EUROCRYPT 2021, "IND-CPA-D"). CKKS decryption returns
the message plus the decryption noise, i.e. c0 + c1·s exactly; whoever holds both the
aggregate ciphertext and its exact decryption (the orchestrator, by design) can solve
linear equations for the secret key s (two ciphertexts suffice) and then decrypt every
individual contribution it received. `decrypt_stream` therefore floods: it adds Gaussian
noise f of coefficient-domain std 2^6 (`FLOOD_COEFF_STD`; ≈ 5.3e-9 per value, the size
of CKKS's own error). What the orchestrator can then compute, c1·s + f, is an RLWE sample
with 20x the HE standard's error at log q = 60 (far inside its 218-bit limit), and the
release tells it only a share σ_e²/σ_f² ≈ n·0.25 % of the variance of the n sites'
summed encryption noise. This is a computational argument for this additions-only use,
not OpenFHE-style statistical flooding (2^30 x the error, ≈ 5e-4 per value here); pass
a larger `flood_std` for more margin at the cost of precision. The noise comes from
AES-CTR keyed by a PRF of the secret key and the frame, so a retried decryption of the
same aggregate returns the same values; decryptions of *different* ciphertexts give
fresh samples, so a datasite must decrypt at most one aggregate per round (the caller
enforces this). `flood_std=0` disables flooding, for local tests only.
"""

from .accumulator import CiphertextAccumulator, check_contribution, sum_contributions
from .ceremony import (
    KeyCeremony,
    create_key_ceremony,
    open_secret_context,
    seal_secret_context,
    sign_recipient_key,
    verify_recipient_key,
)
from .context import (
    COEFF_MOD_BIT_SIZES,
    FLOOD_COEFF_STD,
    GLOBAL_SCALE,
    KEY_ID_BYTES,
    MAX_ABS_VALUE,
    MAX_CONTRIBUTIONS,
    POLY_MODULUS_DEGREE,
    SLOTS,
    WRAP_BOUND,
    HEError,
    SecretContext,
    default_flood_std,
    public_context_bytes,
)
from .decrypt import decrypt_stream
from .encrypt import encrypt_stream
from .frame import DEFAULT_CHUNK_VALUES, ChunkHeader, n_chunks, read_chunk_header
from .pool import sum_stored_contributions

__all__ = [
    "COEFF_MOD_BIT_SIZES",
    "DEFAULT_CHUNK_VALUES",
    "FLOOD_COEFF_STD",
    "GLOBAL_SCALE",
    "KEY_ID_BYTES",
    "MAX_ABS_VALUE",
    "MAX_CONTRIBUTIONS",
    "POLY_MODULUS_DEGREE",
    "SLOTS",
    "WRAP_BOUND",
    "ChunkHeader",
    "CiphertextAccumulator",
    "HEError",
    "KeyCeremony",
    "SecretContext",
    "check_contribution",
    "create_key_ceremony",
    "decrypt_stream",
    "default_flood_std",
    "encrypt_stream",
    "n_chunks",
    "open_secret_context",
    "public_context_bytes",
    "read_chunk_header",
    "seal_secret_context",
    "sign_recipient_key",
    "sum_contributions",
    "sum_stored_contributions",
    "verify_recipient_key",
]
