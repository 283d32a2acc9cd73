"""cr.distill (the callable subpackage), cr.train_gbdt and the config sections in the facade."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import coarserank as cr
import coarserank.config as config
from coarserank.distill import api as distill_api

SRC = Path(__file__).resolve().parents[1] / "src"


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cr_distill_is_the_subpackage_and_calls_the_api_function(
    api_dataset: cr.Dataset, api_cfg: cr.RunConfig
) -> None:
    train, valid, _ = api_dataset.splits()
    hard = replace(api_cfg.distill, alpha=0.0)
    assert cr.distill is sys.modules["coarserank.distill"]
    got = cr.distill(None, train, valid, api_dataset.schema, api_cfg.student, hard, seed=5)
    want = distill_api.distill(None, train, valid, api_dataset.schema, api_cfg.student, hard, seed=5)
    assert isinstance(got, cr.Trained) and _weights_equal(got.model, want.model)


def test_cr_distill_works_before_the_subpackage_is_imported(api_overrides: list[str]) -> None:
    script = textwrap.dedent(f"""
        import sys
        from dataclasses import replace
        import coarserank as cr
        cfg = cr.load_config(overrides={api_overrides!r})
        ds = cr.Dataset.from_config(cfg)
        assert "coarserank.distill" not in sys.modules
        train, valid, _ = ds.splits()
        trained = cr.distill(None, train, valid, ds.schema, cfg.student, replace(cfg.distill, alpha=0.0))
        assert cr.distill is sys.modules["coarserank.distill"]
        print(type(trained).__name__, trained.history.best_epoch)
    """)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Trained", "1"]


def test_distill_submodules_still_import_normally() -> None:
    api = importlib.import_module("coarserank.distill.api")
    from coarserank.distill import gbdt

    assert isinstance(sys.modules["coarserank.distill"], ModuleType)
    assert callable(api.distill) and not isinstance(api.distill, ModuleType)
    assert gbdt.GbdtReference is cr.GbdtReference


def test_train_gbdt_returns_the_fitted_reference_with_its_history(
    api_dataset: cr.Dataset, api_cfg: cr.RunConfig
) -> None:
    train, valid, _ = api_dataset.splits()
    model = cr.train_gbdt(train, valid, api_dataset.schema, api_cfg.gbdt, seed=0, threads=1)
    best = model.booster_.best_iteration
    assert isinstance(model, cr.GbdtReference) and len(model.valid_auc_) >= best > 0
    assert model.valid_auc_[best - 1] == max(model.valid_auc_)
    assert roc_auc_score(valid.label, model.predict_logit(valid.inputs)) == pytest.approx(model.valid_auc_[best - 1])


def test_train_gbdt_with_the_same_seed_gives_the_same_model(api_dataset: cr.Dataset, api_cfg: cr.RunConfig) -> None:
    train, valid, test = api_dataset.splits()
    a, b = (cr.train_gbdt(train, valid, api_dataset.schema, api_cfg.gbdt, seed=3, threads=1) for _ in range(2))
    np.testing.assert_array_equal(a.predict_logit(test.inputs), b.predict_logit(test.inputs))


@pytest.mark.parametrize("name", ["TeacherConfig", "StudentConfig", "DistillConfig", "GbdtConfig", "FeatureConfig"])
def test_the_facade_gives_the_config_sections(name: str) -> None:
    assert getattr(cr, name) is getattr(config, name)
