"""Module bundles: the documented entry point, hash pinning, and the static review aid."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import sys

import httpx
import pytest
import torch
from django.contrib.auth.models import Group, User
from django.test import override_settings

from common.errors import Forbidden
from common.models import ApiToken
from common.protocol import CodeBundle, CodeRequestIn, Plan, bundle_sha256, plan_sha256
from datasite import code_requests, consent, datasets, preparation, results, rounds
from datasite.datagen import generate_so100
from datasite.models import CodeRequest, RoundRun
from datasite.training.dataset import validate_dataset
from datasite.training.modules import ModuleCodeError, check_source, load_entry, validate_source
from datasite.training.recipes import build_bundle, build_policy
from datasite.training.trainer import LocalPlan, evaluate, train_local
from datasite.training.weights import load_safetensors, trainable_state

STUDY = "b" * 32
BASE = {"dim_model": 32, "dim_feedforward": 64, "n_vae_encoder_layers": 1, "freeze_backbone": True}
HEAD = ["model.action_head.bias", "model.action_head.weight"]

FREEZE = '''"""Fine-tune ACT's action head only."""


def build_policy(bundle, config):
    for name, p in bundle.policy.named_parameters():
        p.requires_grad_(name.startswith(config["train"]))
    return bundle
'''

SWAP = """import dataclasses

import torch
from torch import nn


def build_policy(bundle, config):
    act = bundle.policy.model
    act.action_head = nn.Sequential(nn.Linear(act.config.dim_model, config["hidden"]), nn.ReLU(),
                                    nn.Linear(config["hidden"], act.action_head.out_features))
    base = bundle.loss_fn

    def loss_fn(policy, batch):
        return 2.0 * base(policy, batch)

    return dataclasses.replace(bundle, loss_fn=loss_fn)
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def so100(tmp_path_factory):
    root = generate_so100(
        tmp_path_factory.mktemp("mod") / "so100", episodes=4, contributors=2, seed=0, image_size=(32, 40)
    )
    return root, validate_dataset(root)


def module(source: str = FREEZE, **kw) -> CodeBundle:
    kw.setdefault("base_config", BASE)
    kw.setdefault("config", {"train": "model.action_head."})
    return CodeBundle(kind="module", source=source, **kw)


# ----------------------------------------------------------------------------- training


def test_a_module_that_freezes_all_but_the_head_trains_only_the_head(so100):
    root, summary = so100
    code = module().model_dump()
    plan = LocalPlan(local_steps=3, batch_size=4, lr=1e-2, eval_frames=8)
    result = train_local(None, None, None, root, [0, 1, 2], plan, summary.stats, progress=False, code=code)
    assert sorted(result.update) == HEAD  # nothing else is trainable, nothing else travels
    assert [m["name"] for m in result.manifest] == HEAD
    assert all(float(t.abs().sum()) > 0 for t in result.update.values())
    assert result.metrics["recipe"] == "act-small+module"
    # the same bundle under episode-level DP (the base recipe's vmap loss still applies)
    dp = LocalPlan(local_steps=2, batch_size=2, lr=1e-2, dp=True, dp_seed=bytes(16), eval_frames=4)
    private = train_local(None, None, None, root, [0, 1, 2], dp, summary.stats, progress=False, code=code)
    assert sorted(private.update) == HEAD and private.mechanism is not None
    assert private.metrics["dp_mode"] == "vmap"
    with pytest.raises(ValueError, match="either code or recipe"):
        train_local(None, "act-small", None, root, [0], plan, summary.stats, progress=False, code=code)
    weights = trainable_state(build_bundle(code, summary.features, summary.stats, device="cpu").policy)
    loss = evaluate(weights, None, None, root, [3], summary.stats, frames=4, code=code, device="cpu")
    assert loss > 0


def test_a_swapped_head_is_seeded_and_a_new_loss_drops_the_base_vmap_loss(so100):
    _, summary = so100
    code = module(SWAP, config={"hidden": 16}).model_dump()
    a = build_bundle(code, summary.features, summary.stats, device="cpu")
    b = build_bundle(code, summary.features, summary.stats, device="cpu")
    wa, wb = trainable_state(a.policy), trainable_state(b.policy)
    assert "model.action_head.0.weight" in wa and "model.action_head.weight" not in wa
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)  # every site agrees
    assert a.vmap_loss is None and a.recipe == "act-small+module" and a.policy.training
    recipe = build_policy("act-small", BASE, summary.features, summary.stats, device="cpu")
    assert recipe.vmap_loss is not None
    # a module that returns something else is refused with a clear message
    bad = module("def build_policy(bundle, config):\n    return bundle.policy\n").model_dump()
    with pytest.raises(ModuleCodeError, match="must return a PolicyBundle"):
        build_bundle(bad, summary.features, summary.stats, device="cpu")
    raising = module("def build_policy(bundle, config):\n\n    return config['missing']\n").model_dump()
    with pytest.raises(ModuleCodeError, match=r"line 3: .*KeyError") as info:
        build_bundle(raising, summary.features, summary.stats, device="cpu")
    assert info.value.line == 3


# ----------------------------------------------------------------------------- pinning


def test_recipe_bundle_hashes_are_unchanged():
    # computed before module bundles existed
    assert (
        bundle_sha256(CodeBundle(recipe="act-small", config={"dim_model": 32}))
        == "8a940df486266ac145395443bd5299b4f4ba2d752662ef2fb9b46f3a673e2a86"
    )
    assert (
        bundle_sha256(CodeBundle(recipe="act-small"))
        == "eed9b07f3364a86d3f6be35cb025a5d09db7086f4db0bc1cb22807ada9a8cf63"
    )
    assert CodeBundle(recipe="act-small").model_dump() == {
        "kind": "recipe",
        "recipe": "act-small",
        "config": {},
    }


def test_module_bundles_pin_every_character_and_refuse_stray_fields():
    one = module()
    assert one.model_dump().keys() == {"kind", "source", "entry", "base_recipe", "base_config", "config"}
    assert (one.entry, one.base_recipe) == ("build_policy", "act-small")
    assert CodeBundle.model_validate(one.model_dump()) == one
    other = module(FREEZE.replace("Fine-tune", "Fine-tunE"))
    assert bundle_sha256(one) != bundle_sha256(other)
    assert bundle_sha256(one) != bundle_sha256(module(config={"train": "model."}))
    for bad in (
        {"kind": "module", "source": FREEZE, "recipe": "act-small"},
        {"kind": "recipe", "recipe": "act-small", "source": FREEZE},
        {"kind": "module"},
        {"kind": "module", "source": "x = 1\n" * 40_000},
        {"kind": "module", "source": FREEZE, "entry": "os.system"},
    ):
        with pytest.raises(ValueError):
            CodeBundle.model_validate(bad)


# ----------------------------------------------------------------------------- static check


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("import torch\nimport os\n", 2, "import of 'os'"),
        ("import torch\nfrom os.path import join\n", 2, "import from 'os.path'"),
        ("import torch\nimport urllib.request as r\n", 2, "import of 'urllib.request'"),
        ("x = 1\n\ndef f():\n    return open('/etc/passwd').read()\n", 4, "call of open()"),
        ("x = 1\ny = __import__('subprocess')\n", 2, "call of __import__()"),
        ("\n\nz = eval('1 + 1')\n", 3, "call of eval()"),
        ("run = exec\n", 1, "use of exec()"),
        ("k = ().__class__.__base__.__subclasses__()\n", 1, "attribute '__subclasses__'"),
        ("from . import sibling\n", 1, "relative imports"),
    ],
)
def test_the_static_check_refuses_denied_imports_and_calls_with_the_line(source, line, message):
    source += "\ndef build_policy(bundle, config):\n    return bundle\n"
    findings = check_source(source)
    assert any(f.line == line and message in f.message for f in findings), findings
    with pytest.raises(ModuleCodeError, match=f"line {line}: ") as info:
        validate_source(source)
    assert info.value.line == line
    with pytest.raises(ModuleCodeError):  # loading re-runs the check: nothing is executed
        load_entry(source)


# a module that switches DP off: the site would still charge the approved σ to the ledger
NO_NOISE = """import torch

from datasite.training import dp


def build_policy(bundle, config):
    dp.noisy_clipped_gradient = lambda *args, **kwargs: {}
    return bundle
"""


@pytest.mark.adversarial
@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        (NO_NOISE, 3, "import from 'datasite.training' is not allowed (fedsilo's own code"),
        ("import privacy.accounting as x\n", 1, "import of 'privacy.accounting' is not allowed (fedsilo"),
        ("from privacy.csprng import Csprng\n", 1, "import from 'privacy.csprng' is not allowed"),
        ("import datasite.training.dp\n", 1, "import of 'datasite.training.dp' is not allowed"),
        ("from datasite.training.dp import noisy_clipped_gradient as f\n", 1, "fedsilo's own code"),
        ("import torch, privacy\n", 1, "import of 'privacy' is not allowed"),
        ("import common.protocol\n", 1, "import of 'common.protocol'"),
        ("import audit, compliance\n", 1, "import of 'compliance'"),
        ("from orchestrator import engine\n", 1, "import from 'orchestrator'"),
        ("import webapp.settings as s\n", 1, "import of 'webapp.settings'"),
        ("import opacus\n", 1, "import of 'opacus' is not allowed (a DP library"),
        ("from opacus.optimizers import DPOptimizer\n", 1, "import from 'opacus.optimizers'"),
        ("import numpy as np\n", 1, "import of 'numpy' is not allowed (the DP key and noise"),
        ("from cryptography.hazmat.primitives import ciphers\n", 1, "noise predictable"),
        ("import hmac\n", 1, "import of 'hmac'"),
        ("from hashlib import sha256\n", 1, "import from 'hashlib'"),
        ("import secrets\n", 1, "import of 'secrets'"),
        ("x = 1\ndef f():\n    import privacy.ledger\n", 3, "import of 'privacy.ledger'"),
        ("import torch\ntorch.randn = torch.zeros\n", 2, "imported 'torch' (monkeypatching)"),
        ("import torch.linalg as la\nla.vector_norm = abs\n", 2, "imported 'la' (monkeypatching)"),
        ("from torch import nn\nnn.functional.dropout, y = None, 1\n", 2, "imported 'nn'"),
        ("import torch\ntorch.__dict__['randn'] = None\n", 2, "imported 'torch'"),
        ("import torch\ndel torch.linalg.vector_norm\n", 2, "imported 'torch'"),
    ],
)
def test_the_static_check_refuses_modules_that_could_reach_the_dp(source, line, message):
    source += "\ndef build_policy(bundle, config):\n    return bundle\n"
    findings = check_source(source)
    assert any(f.line == line and message in f.message for f in findings), findings
    with pytest.raises(ModuleCodeError, match=f"line {line}: "):
        load_entry(source)  # nothing is executed


def test_modules_may_still_build_layers_and_their_own_vmap_loss():
    source = """import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def build_policy(bundle, config):
    act = bundle.policy.model
    act.action_head = nn.Linear(act.config.dim_model, act.action_head.out_features)
    nn.init.normal_(act.action_head.weight, std=1 / math.sqrt(act.config.dim_model))
    act.extra = torch.zeros(1)
    bundle.config["note"] = F.relu(torch.ones(1)).item()

    def vmap_loss(policy, params, batch):
        return functional_call(policy, params, (batch,))[0]

    return dataclasses.replace(bundle, vmap_loss=vmap_loss)
"""
    assert check_source(source) == []
    assert check_source(SWAP) == [] and check_source(FREEZE) == []


def test_syntax_errors_and_missing_entries_are_reported():
    with pytest.raises(ModuleCodeError, match="line 3: syntax error") as info:
        validate_source("import torch\n\ndef build_policy(bundle config):\n    return bundle\n")
    assert info.value.line == 3
    with pytest.raises(ModuleCodeError, match="no top-level entry point 'build_policy'"):
        validate_source("def train(bundle, config):\n    return bundle\n")
    with pytest.raises(ModuleCodeError, match="no top-level entry point 'train'"):
        validate_source("def build_policy(bundle, config):\n    return bundle\n", entry="train")
    with pytest.raises(ModuleCodeError, match="not async"):
        validate_source("async def build_policy(bundle, config):\n    return bundle\n")
    assert check_source(FREEZE) == []
    assert (
        check_source("import torch.nn as nn\nfrom torch import optim\nbuild_policy = lambda b, c: b\n") == []
    )


def test_load_entry_runs_in_a_fresh_namespace_with_clear_errors():
    fn = load_entry("SCALE = 3\n\ndef build_policy(bundle, config):\n    return SCALE * bundle\n")
    assert fn(2, {}) == 6 and fn.__module__.startswith("fedsilo_module_")
    assert fn.__module__ not in sys.modules
    with pytest.raises(ModuleCodeError, match="not callable"):
        load_entry("build_policy = 3\n")
    with pytest.raises(ModuleCodeError, match=r"must accept \(bundle, config\)") as info:
        load_entry("x = 1\ndef build_policy(bundle):\n    return bundle\n")
    assert info.value.line == 2
    with pytest.raises(ModuleCodeError, match="line 2: the module raised while loading: ZeroDivisionError"):
        load_entry("x = 1\ny = x / 0\ndef build_policy(bundle, config):\n    return bundle\n")


# ----------------------------------------------------------------------------- datasite


def _token(username: str, role: str) -> str:
    user = User.objects.create_user(username)
    user.groups.add(Group.objects.get(name=role))
    return ApiToken.issue(user, "t")[1]


@pytest.fixture
def site(so100, settings, tmp_path):
    settings.NODE_NAME = "site-a"
    settings.DATA_DIR = tmp_path
    ds = datasets.register_dataset("so100", so100[0], epsilon_max=20.0, delta=1e-5)
    for person in set(ds.contributors().values()):
        consent.record_consent(person, "policy-training", True, "form")
    return ds


def _request_body(code: CodeBundle) -> dict:
    plan = Plan(rounds=2, local_steps=2, batch_size=2)
    return {
        "study": STUDY,
        "version": 1,
        "title": "head only",
        "researcher": "rita",
        "code": code.model_dump(),
        "code_sha256": bundle_sha256(code),
        "plan": plan.model_dump(),
        "datasets": ["so100"],
        "sites": ["site-a"],
    }


@pytest.mark.django_db
@override_settings(ROOT_URLCONF="webapp.urls_datasite")
def test_the_api_refuses_a_module_that_imports_socket_with_the_line(client, site):
    peer = _token("node.orchestrator", "peer_node")
    source = (
        '"""Sends the data home."""\nimport socket\n\ndef build_policy(bundle, config):\n    return bundle\n'
    )
    response = client.post(
        "/api/code-requests",
        data=_request_body(module(source)),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {peer}",
    )
    assert response.status_code == 400, response.content
    assert "line 2: import of 'socket' is not allowed" in response.json()["detail"]
    assert not CodeRequest.objects.exists()
    good = client.post(
        "/api/code-requests",
        data=_request_body(module()),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {peer}",
    )
    assert good.status_code == 201, good.content
    owner = User.objects.create_user("olga")
    owner.groups.add(Group.objects.get_or_create(name="data_owner")[0])
    client.force_login(owner)
    page = client.get(f"/site/requests/{good.json()['study']}/").content.decode()
    assert "it can build and change the policy" in page and "is not a sandbox" in page


@pytest.mark.django_db
def test_an_approved_module_runs_and_refuses_to_run_a_different_source(site):
    code = module()
    code_requests.receive_code_request(CodeRequestIn.model_validate(_request_body(code)))
    request = CodeRequest.objects.get()
    code_requests.decide(request, User.objects.create_user("olga"), True, request.code_sha256)
    stats = preparation.study_stats(STUDY)
    initial = preparation.initial_weights(STUDY, stats)
    assert sorted(load_safetensors(initial)) == HEAD
    (results.round_dir(STUDY, 1) / "global.safetensors").write_bytes(initial)
    run = RoundRun.objects.create(
        request=request,
        study=STUDY,
        round=1,
        assignment={
            "code_sha256": request.code_sha256,
            "plan_sha256": request.plan_sha256,
            "norm_stats": stats,
        },
    )
    assert request.plan_sha256 == plan_sha256(Plan.model_validate(request.plan))
    metrics, _, _, mechanism, _ = rounds.train_round(run)  # the approved module trains, under DP
    assert mechanism is not None and metrics["recipe"] == "act-small+module" and metrics["heldout_loss"] > 0
    assert sorted(load_safetensors((results.round_dir(STUDY, 1) / "update.safetensors").read_bytes())) == HEAD
    # one character changed under the approval, and code that would show if it ever ran
    tampered = FREEZE.replace("Fine-tune", "Fine-tunE") + "raise RuntimeError('the tampered module ran')\n"
    CodeRequest.objects.filter(pk=request.pk).update(code={**request.code, "source": tampered})
    with pytest.raises(Forbidden, match="no longer matches its approved SHA-256"):
        rounds.train_round(run)
    with pytest.raises(Forbidden, match="no longer matches its approved SHA-256"):
        preparation.initial_weights(STUDY, stats)


def test_the_client_proposes_a_module_bundle(tmp_path):
    from orchestrator.client import Client

    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(201, json={"id": STUDY})

    path = tmp_path / "head.py"
    path.write_text(FREEZE)
    client = Client("http://orchestrator.test", token="t")
    client._http = httpx.Client(
        base_url="http://orchestrator.test/api", transport=httpx.MockTransport(handler)
    )
    client.propose_study(
        "head only",
        {"site-a": "so100"},
        rounds=2,
        module_source=path,
        base_config=BASE,
        config={"train": "x"},
    )
    client.propose_study("recipe", {"site-a": "so100"}, rounds=2, config={"dim_model": 32})
    code = CodeBundle.model_validate(sent[0]["code"])
    assert code.kind == "module" and code.source == FREEZE and code.base_recipe == "act-small"
    assert code.base_config == BASE and code.config == {"train": "x"} and code.entry == "build_policy"
    assert sent[1]["code"] == {"kind": "recipe", "recipe": "act-small", "config": {"dim_model": 32}}
    with pytest.raises(ValueError, match="module bundles"):
        client.propose_study("x", {"site-a": "so100"}, rounds=1, base_recipe="act-small")


def test_the_request_page_shows_a_modules_settings_under_its_source():
    from datasite.views.requests import code_text

    text, lexer = code_text(module().model_dump())
    assert text.startswith('"""Fine-tune') and lexer.name == "Python"
    assert '#   base_config = {"dim_feedforward": 64' in text and '#   entry = "build_policy"' in text
