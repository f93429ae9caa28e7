"""SecAgg+-style secure aggregation: the server learns the sum of the sites' updates, nothing else.

A pure library (numpy + `cryptography`; no Django, no app imports). One round, n sites:

1. Advertise keys. Each site makes two fresh X25519 key pairs, (c_sk, c_pk) for its
   pairwise encryption channels and (s_sk, s_pk) for mask agreement, and signs
   (round id, site id, c_pk, s_pk, SHA-256 of the round parameters) with its long-term
   Ed25519 key. Clients verify every advert against the long-term public keys they already
   know, so the server cannot substitute keys (man-in-the-middle), replay adverts from
   another round, or give sites different parameters (sites, threshold, graph).
2. Share keys. Each site draws a self-mask seed b_i and Shamir-shares b_i and s_sk_i
   t-of-m over GF(2^255-19) among itself and its neighbours (m = n for the complete graph).
   Each share is AES-256-GCM encrypted under HKDF-SHA256(X25519(c_sk_i, c_pk_j)) with
   context (round, sorted pair) and associated data (round, sender, receiver); the server
   only relays ciphertexts.
3. Masked input. y_i = q_i + PRG(b_i) + Σ_{j∈N(i)∩U2} ±PRG(s_ij) in Z_2^32, where q_i is
   the update quantized by `quantize` (b = 32 - ceil(log2 n) - 1 bits, so sums never wrap),
   s_ij = HKDF(X25519(s_sk_i, s_pk_j), round, pair), the sign is + towards the later site
   in sorted order, and PRG is AES-128-CTR keyed by HKDF(seed). The server adds y_i into
   one running uint32 sum as it arrives. The mask does not depend on the update, so a
   site may expand it while it trains (`precompute_mask`); masked_input is then one add.
4. Unmask. The survivors (sites that sent y_i) reveal, for each other site that shared
   keys with them, the b share if it survived or the s_sk share if it dropped, never both
   (clients refuse). The server rebuilds b_i of survivors (checked against a SHA-256
   commitment sent with y_i) and s_sk_j of dropped sites (checked against the advertised
   s_pk_j), removes PRG(b_i) and the dropped sites' pairwise masks, and obtains
   Σ_{survivors} q_i exactly. Up to m - t sites may drop after sharing keys.

SecAgg+ option: `neighbours=k` pairs each site with k pseudo-random neighbours (a circulant
graph over an order derived from the public round id and seed) instead of all n-1; costs
drop from O(n) to O(k) per site, and t counts within each site's group of k+1 (k rounded
up to even). Privacy then relies on the honest sites staying connected in the graph;
Bell et al. (CCS 2020) take k = O(log n).

Threat model.
- Honest-but-curious server (follows the protocol, reports dropouts truthfully, tries to
  learn inputs from what it sees), colluding with fewer than t sites: it learns only
  the sum of the survivors' quantized inputs. Every individual y_i is one-time-padded by
  PRG(b_i), and the server never obtains both b_i and s_sk_i for the same site.
- Malicious server that lies about who dropped (tells some sites j survived and others
  that j dropped, to collect b_j and s_sk_j shares separately): t > m/2 is enforced, so
  without colluding sites two disjoint sets of t answers cannot exist; but this
  implementation does NOT run the signed consistency-check round of Bonawitz et al.
  (CCS 2017, §4): with such a server use t ≥ floor(2m/3)+1 and treat the guarantee as
  incomplete until that round is added. Such a server also picks the round id and graph
  seed, hence the SecAgg+ graph; the sparse option assumes it does not grind them.
- Sites are authenticated by their long-term Ed25519 keys only in phase 1; later uploads
  rely on the transport (per-peer token over TLS). Malicious sites can corrupt the sum
  (no input validation beyond the length) but a bad share is detected when it breaks a
  reconstruction (commitment / public-key check). Quantization clips every value to the
  plan's [-clip, clip]; DP noise must be added before `quantize`.
"""

from .client import SecAggClient
from .errors import DecryptionError, ProtocolError, SecAggError, SignatureError, ThresholdError
from .messages import EncryptedShare, KeyAdvert, MaskedInput, UnmaskRequest, UnmaskResponse
from .params import SecAggParams
from .quantize import dequantize_sum, quantization_bits, quantization_step, quantize
from .server import SecAggServer

__all__ = [
    "DecryptionError",
    "EncryptedShare",
    "KeyAdvert",
    "MaskedInput",
    "ProtocolError",
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggServer",
    "SignatureError",
    "ThresholdError",
    "UnmaskRequest",
    "UnmaskResponse",
    "dequantize_sum",
    "quantization_bits",
    "quantization_step",
    "quantize",
]
