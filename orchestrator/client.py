"""The researcher's Python client for a fedsilo orchestrator (httpx only; no Django).

>>> from orchestrator.client import Client
>>> fed = Client("https://fed.example.org", token="fst_…")
>>> fed.datasites()
>>> study = fed.propose_study("ACT on SO-100", recipe="act-small", config={},
...                           datasets={"lab-a": "pick-place", "lab-b": "pick-place"},
...                           rounds=5, strategy="fedprox", mu=0.01,
...                           dp={"noise_multiplier": 1.0, "clip_norm": 1.0})
>>> study.wait(progress=True)
>>> study.metrics(); study.download_model("model.safetensors")

Custom training code: ``module_source`` (Python source text, or a ``Path`` to read it from)
defining ``build_policy(bundle, config) -> PolicyBundle``, applied to ``base_recipe`` built
with ``base_config``; ``config`` is then handed to the entry point (see README, "Custom
training code").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Client", "FedsiloError", "Study", "StudyFailed"]

FINAL = ("finished", "failed", "cancelled")


class FedsiloError(Exception):
    """The orchestrator refused a request; ``status`` is the HTTP status."""

    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {detail}")


class StudyFailed(FedsiloError):
    """A study ended failed or cancelled."""


class Client:
    """A researcher's session with one orchestrator, authenticated by an API token."""

    def __init__(self, url: str, token: str, timeout: float = 60.0, verify: bool | str = True):
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.url}/api",
            timeout=timeout,
            verify=verify,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        # a GET is retried once on a broken connection: the server may close an idle
        # keep-alive connection just as the next request goes out on it
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except httpx.HTTPError as exc:
                broken = isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException)
                if not (broken and attempt + 1 < attempts):
                    raise FedsiloError(0, f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise FedsiloError(response.status_code, detail)
        return response

    def datasites(self) -> list[dict]:
        """Member datasites with their status and last heartbeat."""
        return self._request("GET", "/federation/datasites").json()

    def datasets(self) -> dict[str, list[dict]]:
        """Each site's datasets: schema, counts, statistics shape and a synthetic mock."""
        return self._request("GET", "/federation/datasets").json()

    def propose_study(
        self,
        title: str,
        datasets: dict[str, str],
        rounds: int,
        recipe: str = "act-small",
        config: dict | None = None,
        strategy: str = "fedavg",
        mu: float = 0.0,
        dp: dict | None = None,
        aggregation: str = "secagg",
        module_source: str | Path | None = None,
        entry: str = "build_policy",
        base_recipe: str | None = None,
        base_config: dict | None = None,
        **plan: Any,
    ) -> Study:
        """Propose a study; each site's data owner reviews it before anything runs.

        The code is ``recipe`` with ``config``, or, when ``module_source`` is given (source
        text or a ``Path``), a module bundle: its ``entry`` function receives ``base_recipe``
        (default: ``recipe``) built with ``base_config``, and ``config``.
        ``aggregation`` is ``secagg`` (default: the orchestrator sees only the sum), ``he``
        (CKKS; see the README for its trust model) or ``plain`` (each site's update in the
        clear: only where every data owner accepts that). ``plan`` takes the other plan
        fields: local_steps, batch_size, lr, server, min_sites, fraction, holdout_fraction,
        purpose, seed, round_timeout_s, secure (clip, threshold, max_weight), robust.
        """
        if module_source is None:
            if base_recipe is not None or base_config is not None:
                raise ValueError("base_recipe and base_config are for module bundles (module_source)")
            code = {"kind": "recipe", "recipe": recipe, "config": config or {}}
        else:
            source = module_source.read_text() if isinstance(module_source, Path) else module_source
            code = {
                "kind": "module",
                "source": source,
                "entry": entry,
                "base_recipe": base_recipe or recipe,
                "base_config": base_config or {},
                "config": config or {},
            }
        body = {
            "title": title,
            "code": code,
            "plan": {
                "rounds": rounds,
                "strategy": strategy,
                "mu": mu,
                "dp": dp or {},
                "aggregation": aggregation,
                **plan,
            },
            "datasets": datasets,
        }
        return Study(self, self._request("POST", "/studies", json=body).json()["id"])

    def study(self, study_id: str) -> Study:
        return Study(self, study_id)

    def studies(self) -> list[dict]:
        return self._request("GET", "/studies").json()


class Study:
    """A handle on one study."""

    def __init__(self, client: Client, study_id: str):
        self.client, self.id = client, study_id

    def __repr__(self) -> str:
        return f"Study({self.id!r})"

    def status(self) -> dict:
        return self.client._request("GET", f"/studies/{self.id}").json()

    def metrics(self) -> list[dict]:
        """Per-round metrics: per-site losses, global held-out loss, ε spent per dataset."""
        return self.client._request("GET", f"/studies/{self.id}/metrics").json()

    def cancel(self) -> dict:
        return self.client._request("POST", f"/studies/{self.id}/cancel").json()

    def download_model(self, path: str | Path) -> Path:
        """Save the latest global weights (safetensors) to ``path``."""
        path = Path(path)
        with self.client._http.stream("GET", f"/studies/{self.id}/model") as response:
            if response.status_code >= 400:
                response.read()
                raise FedsiloError(response.status_code, response.text)
            with path.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        return path

    def wait(self, progress: bool = False, poll: float = 2.0, timeout: float | None = None) -> dict:
        """Block until the study ends; raise :class:`StudyFailed` unless it finished."""
        bar = None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                status = self.status()
                if progress:
                    if bar is None:
                        from tqdm import tqdm

                        bar = tqdm(total=status["rounds"], desc=status["title"][:30], unit="round")
                    done = min(status["rounds"], max(0, status["round"] - 1))
                    if status["status"] == "finished":
                        done = status["rounds"]
                    bar.update(done - bar.n)
                    bar.set_postfix_str(f"{status['status']} {status['phase']}".strip())
                if status["status"] in FINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"study {self.id} still {status['status']} after {timeout}s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        if status["status"] != "finished":
            raise StudyFailed(0, f"study {self.id} {status['status']}: {status['error']}")
        return status
