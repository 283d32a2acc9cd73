"""`distill publish` and a long-lived CoarseRanker on a Redis store that other runs publish to."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.errors import ArtifactError, ServingError
from coarserank.serving.kv_file import FileKVStore
from coarserank.serving.kv_redis import RedisKVStore
from coarserank.serving.ranker import CoarseRanker

from .test_ranker import USER, served_run_dir

SECRET = "s3cret-pw"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    return served_run_dir(tmp_path_factory, tiny_overrides)


@pytest.fixture(scope="module")
def catalogue(run_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    with FileKVStore(run_dir / "items.kv") as kv:
        ids = np.array(kv.ids())
        return ids, kv.get_strict(ids), kv.model_hash


@pytest.fixture
def secured(redis_server: str) -> Iterator[str]:
    """The test server's URL for an ACL user whose password is SECRET."""
    raw = redis.Redis.from_url(redis_server)
    raw.acl_setuser("ranker", enabled=True, passwords=[f"+{SECRET}"], keys=["*"], commands=["+@all"])
    yield redis_server.replace("redis://", f"redis://ranker:{SECRET}@")
    raw.acl_deluser("ranker")
    raw.close()


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(distill, list(args))
    return result.exit_code, result.output


def test_publish_makes_the_runs_vectors_current_under_a_namespace(run_dir, catalogue, redis_server,
                                                                 redis_namespace) -> None:
    code, out = _invoke("publish", "--run", str(run_dir), "--store", redis_server, "--namespace", redis_namespace)
    assert code == 0, out
    assert f"namespace {redis_namespace!r}" in out and "version 1" in out
    ids, vectors, model_hash = catalogue
    store = RedisKVStore(redis_server, namespace=redis_namespace)
    assert store.model_hash == model_hash
    assert store.run_id == json.loads((run_dir / "serving.json").read_text())["run_id"] != ""
    np.testing.assert_array_equal(store.get(ids).vectors, vectors)


def test_rank_from_a_published_redis_store_equals_rank_from_the_file(run_dir, redis_server, redis_namespace,
                                                                    tmp_path) -> None:
    _invoke("publish", "--run", str(run_dir), "--store", redis_server, "--namespace", redis_namespace)
    (tmp_path / "ids.txt").write_text("\n".join(map(str, range(40))))
    args = ["rank", "--run", str(run_dir), "--user", json.dumps(USER), "--candidates", str(tmp_path / "ids.txt")]
    code_file, from_file = _invoke(*args)
    code_redis, from_redis = _invoke(*args, "--store", redis_server, "--namespace", redis_namespace)
    assert code_file == code_redis == 0, from_redis
    assert json.loads(from_redis) == json.loads(from_file)
    assert json.loads(from_file)["score_kind"] == "logit"


def test_publish_to_a_path_is_refused(run_dir, tmp_path) -> None:
    code, out = _invoke("publish", "--run", str(run_dir), "--store", str(tmp_path / "x.kv"))
    assert code != 0 and "publish writes to a Redis store" in out


def test_rank_on_a_store_of_another_model_never_prints_the_password(run_dir, catalogue, secured,
                                                                   redis_namespace, tmp_path) -> None:
    ids, vectors, _ = catalogue
    RedisKVStore(secured, namespace=redis_namespace).publish(ids, vectors, "f" * 64)
    (tmp_path / "ids.txt").write_text("1\n2\n")
    code, out = _invoke("rank", "--run", str(run_dir), "--user", json.dumps(USER), "--candidates",
                        str(tmp_path / "ids.txt"), "--store", secured, "--namespace", redis_namespace)
    assert code != 0
    assert "holds vectors of model 'fff" in out and "ranker:***@" in out
    assert SECRET not in out and "Traceback" not in out


def test_rank_on_a_mistyped_store_url_never_prints_the_password(run_dir, tmp_path) -> None:
    (tmp_path / "ids.txt").write_text("1\n")
    code, out = _invoke("rank", "--run", str(run_dir), "--user", json.dumps(USER), "--candidates",
                        str(tmp_path / "ids.txt"), "--store", f"redis//:{SECRET}@127.0.0.1:6379/0")
    assert code != 0 and "is not a valid URL" in out
    assert SECRET not in out


@pytest.fixture
def following(run_dir, catalogue, redis_server, redis_namespace) -> tuple[CoarseRanker, RedisKVStore]:
    """A ranker following the current version of a store this run published to, and a publisher."""
    ids, vectors, model_hash = catalogue
    publisher = RedisKVStore(redis_server, namespace=redis_namespace)
    publisher.publish(ids, vectors, model_hash)
    return CoarseRanker.from_run(run_dir, store=redis_server, namespace=redis_namespace), publisher


def test_a_ranker_refuses_another_models_vectors_and_keeps_serving_its_own(following, catalogue, caplog) -> None:
    ranker, publisher = following
    ids, vectors, _ = catalogue
    before = ranker.rank(USER, ids[:50], 10)
    other = publisher.publish(ids, -vectors, "e" * 64)
    with caplog.at_level(logging.WARNING, logger="coarserank.serving.kv_redis"):
        after = ranker.rank(USER, ids[:50], 10)
        ranker.rank(USER, ids[:50], 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert ranker.store.refused_versions == [other]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "holds vectors of model 'eee" in warnings[0] and "still serving version 1" in warnings[0]


def test_a_ranker_follows_a_new_version_of_its_own_model(following, catalogue) -> None:
    ranker, publisher = following
    ids, vectors, model_hash = catalogue
    newer = publisher.publish(ids, vectors * 2, model_hash)
    ranker.rank(USER, ids[:5], 5)
    assert ranker.store.version == newer and ranker.store.refused_versions == []


def test_a_ranker_fails_clearly_once_its_last_good_version_is_deleted(following, catalogue) -> None:
    ranker, publisher = following
    ids, vectors, _ = catalogue
    publisher.publish(ids, vectors, "e" * 64, keep_previous=1)
    ranker.rank(USER, ids[:5], 5)  # refused: still serving version 1
    publisher.publish(ids, vectors, "e" * 64, keep_previous=0)  # deletes version 1
    with pytest.raises(ServingError, match="version 1, the last of model .* was deleted"):
        ranker.rank(USER, ids[:5], 5)


def test_opening_a_store_of_another_model_is_refused(run_dir, catalogue, redis_server, redis_namespace) -> None:
    ids, vectors, _ = catalogue
    RedisKVStore(redis_server, namespace=redis_namespace).publish(ids, vectors, "e" * 64)
    with pytest.raises(ArtifactError, match="publish this run's item vectors first"):
        CoarseRanker.from_run(run_dir, store=redis_server, namespace=redis_namespace)
