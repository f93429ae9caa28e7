"""SO-100 datasets: generation, validation, loading with contributors, mocks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np
import pyarrow.parquet as pq
import pytest

from datasite.datagen import PROFILES, generate_so100
from datasite.training.dataset import (
    CONTRIBUTORS_FILE,
    SO100_JOINT_NAMES,
    UNKNOWN_CONTRIBUTOR,
    DatasetError,
    DatasetSummary,
    episode_contributors,
    episodes_for_contributors,
    load_dataset,
    make_mock,
    mock_preview,
    validate_dataset,
)

JOINTS = list(SO100_JOINT_NAMES)


def _columns(root: Path, *cols: str) -> dict[str, np.ndarray]:
    files = sorted((root / "data").glob("*/*.parquet"))
    table = pq.read_table([str(f) for f in files] if len(files) > 1 else files[0], columns=list(cols))
    return {c: np.array(table.column(c).to_pylist()) for c in cols}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """8 episodes, 3 contributors, 30 frames each."""
    root = tmp_path_factory.mktemp("so100") / "site"
    return generate_so100(root, episodes=8, contributors=3, seed=7, frames_per_episode=30)


def _foreign(root: Path, **overrides) -> Path:
    """An SO-100 dataset made by 'another lab' with lerobot directly."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    vec = {"dtype": "float32", "shape": (6,), "names": JOINTS}
    cam = {"dtype": "image", "shape": (48, 64, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.state": dict(vec),
        "action": dict(vec),
        "observation.effort": dict(vec),
        "observation.images.front": dict(cam),
        "observation.images.gripper": dict(cam),
    }
    features.update(overrides.pop("features", {}))
    features = {k: v for k, v in features.items() if v is not None}
    ds = LeRobotDataset.create(
        "otherlab/so100-recording",
        fps=overrides.pop("fps", 30),
        features=features,
        root=root,
        robot_type=overrides.pop("robot_type", "so100_follower"),
        use_videos=False,
        video_backend="pyav",
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        for _ in range(5):
            frame = {}
            for k, ft in features.items():
                if ft["dtype"] == "image":
                    frame[k] = rng.integers(0, 255, ft["shape"], dtype=np.uint8)
                else:
                    frame[k] = rng.normal(size=ft["shape"]).astype(ft["dtype"])
            ds.add_frame({**frame, "task": "pick up the cube"})
        ds.save_episode()
    ds.finalize()
    return root


# ---------------------------------------------------------------- generation


def test_generated_dataset_loads_with_lerobot_and_has_so100_schema(site):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("fedsilo/so100-synthetic", root=site, video_backend="pyav")
    assert ds.meta.robot_type == "so100"
    assert ds.fps == 30
    assert ds.num_episodes == 8 and ds.num_frames == 8 * 30
    assert ds.meta.info.codebase_version == "v3.0"
    for key in ("observation.state", "action"):
        ft = ds.features[key]
        assert ft["dtype"] == "float32" and tuple(ft["shape"]) == (6,) and ft["names"] == JOINTS
    assert ds.meta.camera_keys == ["observation.images.top", "observation.images.wrist"]
    item = ds[0]
    assert item["observation.images.top"].shape == (3, 96, 128)
    assert item["observation.state"].dtype.is_floating_point
    assert item["task"].startswith("pick the ")
    summary = validate_dataset(site)
    assert summary.num_episodes == 8 and summary.robot_type == "so100"
    assert summary.warnings == []
    assert set(summary.stats["action"]) >= {"mean", "std", "min", "max"}
    assert len(summary.stats["action"]["mean"]) == 6
    assert summary.episode_lengths == dict.fromkeys(range(8), 30)
    round_trip = json.loads(json.dumps(summary.to_dict()))
    assert DatasetSummary.from_dict({**round_trip, "added_by_caller": 1}) == summary


def test_same_seed_same_arrays_other_seed_differs(tmp_path):
    def arrays(root: Path) -> dict[str, np.ndarray]:
        return _columns(root, "observation.state", "action")

    kw = {"episodes": 2, "contributors": 1, "frames_per_episode": 20}
    a = arrays(generate_so100(tmp_path / "a", seed=3, **kw))
    b = arrays(generate_so100(tmp_path / "b", seed=3, **kw))
    c = arrays(generate_so100(tmp_path / "c", seed=4, **kw))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.allclose(a[key], c[key])
    assert episode_contributors(tmp_path / "a") == episode_contributors(tmp_path / "b")


def test_profiles_differ(tmp_path):
    assert {"default", "lab-a", "lab-b", "lab-c"} <= set(PROFILES)
    summaries, brightness = {}, {}
    for name in ("lab-a", "lab-b"):
        root = generate_so100(tmp_path / name, episodes=3, contributors=1, seed=1, profile=name)
        summaries[name] = validate_dataset(root)
        brightness[name] = float(np.mean(summaries[name].stats["observation.images.top"]["mean"]))
    a, b = summaries["lab-a"], summaries["lab-b"]
    assert a.num_frames / a.num_episodes == PROFILES["lab-a"].frames  # arm speed
    assert b.num_frames / b.num_episodes == PROFILES["lab-b"].frames
    assert a.num_frames != b.num_frames
    assert brightness["lab-a"] > brightness["lab-b"] + 0.05  # lighting
    assert not set(a.tasks) & set(b.tasks)  # task mix


def test_actions_depend_on_the_cube_seen_in_the_image(tmp_path):
    """Learnable: where the arm reaches (pan at grasp) follows the cube's image position."""
    root = generate_so100(tmp_path / "d", episodes=10, contributors=2, seed=5, frames_per_episode=40)
    ds = load_dataset(root)
    cols = _columns(root, "episode_index", "action")
    cube_u, pan_at_grasp = [], []
    for ep in range(10):
        rows = np.flatnonzero(cols["episode_index"] == ep)
        img = ds[int(rows[0])]["observation.images.top"].numpy()  # (3, H, W) in [0, 1]
        r, g, b = img
        cube = (np.maximum(r, np.maximum(g, b)) - np.minimum(r, np.minimum(g, b))) > 0.5
        cube_u.append(np.nonzero(cube)[1].mean())
        act = cols["action"][rows]
        grasp = int(np.argmax(act[:, 5] < 20.0))  # gripper closes on the cube
        pan_at_grasp.append(act[grasp, 0])
    assert np.std(pan_at_grasp) > 5.0  # the object position varies per episode
    assert abs(np.corrcoef(cube_u, pan_at_grasp)[0, 1]) > 0.9


# ---------------------------------------------------------------- contributors


def test_contributor_ids_survive_loading(site):
    mapping = episode_contributors(site)
    assert sorted(mapping) == list(range(8))
    assert len(set(mapping.values())) == 3
    assert all(p.startswith("c-") and len(p) > 6 for p in mapping.values())
    sidecar = json.loads((site / CONTRIBUTORS_FILE).read_text())
    assert {int(k): v for k, v in sidecar["episodes"].items()} == mapping
    assert validate_dataset(site).contributors == mapping
    ds = load_dataset(site)
    seen: dict[int, set[int]] = {}
    for i in range(0, len(ds), 7):
        item = ds[i]
        seen.setdefault(int(item["episode_index"]), set()).add(int(item["contributor.id"]))
    for ep, ids in seen.items():
        assert len(ids) == 1
        # the same numeric id always goes with the same pseudonym
        others = [e for e, i2 in seen.items() if i2 == ids]
        assert {mapping[e] for e in others} == {mapping[ep]}


def test_contributor_feature_is_the_fallback_without_sidecar(site, tmp_path):
    copy = Path(shutil.copytree(site, tmp_path / "copy"))
    (copy / CONTRIBUTORS_FILE).unlink()
    ids = _columns(copy, "episode_index", "contributor.id")
    expected = {int(e): f"contributor-{int(c)}" for e, c in zip(*ids.values(), strict=True)}
    assert episode_contributors(copy) == expected
    assert len(set(expected.values())) == 3


def test_excluded_episodes_are_never_read(site):
    mapping = episode_contributors(site)
    withdrawn = mapping[0]
    allowed = set(mapping.values()) - {withdrawn}
    keep = episodes_for_contributors(site, allowed)
    excluded = {ep for ep, who in mapping.items() if who == withdrawn}
    assert keep and excluded and not set(keep) & excluded
    assert set(keep) | excluded == set(range(8))
    ds = load_dataset(site, episodes=keep)
    assert len(ds) == 30 * len(keep)
    got = {int(ds[i]["episode_index"]) for i in range(len(ds))}
    assert got == set(keep)
    assert not set(ds.hf_dataset.data.column("episode_index").to_pylist()) & excluded
    # action chunks (as ACT asks for) never reach into an excluded episode either
    chunked = load_dataset(site, episodes=keep, delta_timestamps={"action": [i / 30 for i in range(8)]})
    allowed_actions = _columns(site, "episode_index", "action")
    kept_rows = np.isin(allowed_actions["episode_index"], keep)
    kept_set = {tuple(a) for a in allowed_actions["action"][kept_rows].tolist()}
    for i in range(0, len(chunked), 10):
        item = chunked[i]
        assert item["action"].shape == (8, 6)
        for a, pad in zip(item["action"].tolist(), item["action_is_pad"].tolist(), strict=True):
            assert pad or tuple(np.float32(a).tolist()) in kept_set
    with pytest.raises(DatasetError, match="no episodes"):
        load_dataset(site, episodes=[])
    with pytest.raises(DatasetError, match="not in"):
        load_dataset(site, episodes=[99])


# ---------------------------------------------------------------- validation


def test_foreign_lerobot_dataset_registers(tmp_path):
    root = _foreign(tmp_path / "other")
    summary = validate_dataset(root)
    assert summary.robot_type == "so100_follower"
    assert summary.cameras == ["observation.images.front", "observation.images.gripper"]
    assert "observation.effort" in summary.features
    assert summary.contributors == dict.fromkeys(range(2), UNKNOWN_CONTRIBUTOR)
    assert episodes_for_contributors(root, {UNKNOWN_CONTRIBUTOR}) == [0, 1]
    assert len(load_dataset(root, episodes=[1])) == 5


def test_other_joint_names_accepted_with_warning(tmp_path):
    names = [f"motor_{i}" for i in range(6)]
    vec = {"dtype": "float32", "shape": (6,), "names": names}
    root = _foreign(tmp_path / "n", robot_type=None, features={"observation.state": vec, "action": dict(vec)})
    summary = validate_dataset(root)
    text = " ".join(summary.warnings)
    assert "robot_type is not set" in text and "assuming the SO-100" in text


def _error(root: Path) -> str:
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    return str(info.value)


def test_bad_folders_refused_with_named_reason(tmp_path):
    missing = tmp_path / "nowhere"
    assert "does not exist" in _error(missing)
    assert not missing.exists()  # lerobot would have created it

    (tmp_path / "empty").mkdir()
    assert "meta/info.json is missing" in _error(tmp_path / "empty")

    old = tmp_path / "old"
    (old / "meta").mkdir(parents=True)
    (old / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30}))
    msg = _error(old)
    assert "'v2.1'" in msg and "v3.0" in msg and "convert" in msg

    no_action = _foreign(tmp_path / "no_action", features={"action": None})
    msg = _error(no_action)
    assert "lacks the SO-100 feature 'action'" in msg

    wide = {"dtype": "float32", "shape": (7,), "names": None}
    msg = _error(_foreign(tmp_path / "wide", features={"observation.state": wide}))
    assert "'observation.state'" in msg and "(7,)" in msg and "(6,)" in msg

    msg = _error(_foreign(tmp_path / "koch", robot_type="koch_follower"))
    assert "koch_follower" in msg

    broken = _foreign(tmp_path / "broken")
    for f in (broken / "data").glob("*/*.parquet"):
        f.unlink()
    msg = _error(broken)
    assert "lacks 1 data file(s): data/chunk-000/file-000.parquet" in msg
    with pytest.raises(DatasetError, match="data file"):
        load_dataset(broken)


# ---------------------------------------------------------------- mocks


def _numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list | tuple):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, float):
        return [obj]
    return []


def test_mock_keeps_schema_but_no_private_value(site, tmp_path):
    real = validate_dataset(site)
    real_cols = _columns(site, "observation.state", "action")
    private = {float(x) for arr in real_cols.values() for x in arr.ravel()}
    for key in ("observation.state", "action", "observation.images.top", "observation.images.wrist"):
        private |= {float(x) for name, v in real.stats[key].items() if name != "count" for x in np.ravel(v)}
    secret_strings = set(real.contributors.values()) | set(real.tasks)

    mock_root = make_mock(real, tmp_path / "mock", frames=12, seed=1)
    mock = validate_dataset(mock_root)
    assert mock.features == real.features
    assert mock.robot_type == real.robot_type and mock.fps == real.fps
    assert mock.stats.keys() == real.stats.keys()
    for key in real.stats:
        for name in real.stats[key]:
            assert np.shape(mock.stats[key][name]) == np.shape(real.stats[key][name])
    mock_cols = _columns(mock_root, "observation.state", "action")
    leaked = {float(x) for arr in mock_cols.values() for x in arr.ravel()} & private
    leaked |= set(_numbers(mock.stats)) & private
    assert not leaked
    text = "\n".join(p.read_text() for p in (mock_root / "meta").glob("*.json"))
    assert not any(s in text for s in secret_strings)
    assert set(mock.tasks) == {"mock task"}

    preview = mock_preview(real)
    blob = json.dumps(preview)
    assert preview["synthetic"] is True
    assert preview["features"]["action"]["shape"] == [6]
    assert preview["cameras"]["observation.images.top"]["shape"] == [96, 128, 3]
    assert preview["stats_shape"]["action"]["mean"] == [6]
    assert len(preview["frames"]) == 3 and len(preview["frames"][0]["action"]) == 6
    assert not set(_numbers(preview)) & private
    assert not any(s in blob for s in secret_strings)
    lo, hi = -100.0, 100.0
    assert all(lo <= x <= hi for f in preview["frames"] for x in f["observation.state"])
