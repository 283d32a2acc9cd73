"""cr.DistilledRanker follows scikit-learn's estimator contract and trains what the library calls train."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import expit
from sklearn.base import clone

import coarserank as cr
from coarserank.errors import ConfigError


@pytest.fixture(scope="module")
def fitted(api_cfg: cr.RunConfig, api_dataset: cr.Dataset) -> cr.DistilledRanker:
    return cr.DistilledRanker(teacher=api_cfg.teacher, student=api_cfg.student, distill=api_cfg.distill, seed=7).fit(
        api_dataset
    )


def test_the_constructor_stores_its_parameters_as_given() -> None:
    teacher = cr.TeacherConfig(epochs=3)
    ranker = cr.DistilledRanker(teacher=teacher, seed=4)
    assert ranker.teacher is teacher and ranker.seed == 4 and ranker.device == "cpu"
    assert ranker.student == cr.StudentConfig() and ranker.distill == cr.DistillConfig()


def test_clone_gives_an_unfitted_copy_with_equal_parameters(fitted: cr.DistilledRanker) -> None:
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "student_") and hasattr(fitted, "student_")


def test_get_params_and_set_params_round_trip() -> None:
    source = cr.DistilledRanker(student=cr.StudentConfig(epochs=2, lr=0.01), seed=9, device="cuda")
    target = cr.DistilledRanker().set_params(**source.get_params(deep=True))
    assert target.get_params(deep=True) == source.get_params(deep=True)
    assert target.get_params(deep=False) == source.get_params(deep=False)


def test_a_nested_parameter_replaces_one_key_of_its_section() -> None:
    ranker = cr.DistilledRanker(teacher=cr.TeacherConfig(epochs=3, lr=0.01)).set_params(teacher__epochs=1)
    assert ranker.teacher == cr.TeacherConfig(epochs=1, lr=0.01)


@pytest.mark.parametrize("key", ["seeds", "seed__x", "teacher__epoch"])
def test_an_unknown_parameter_is_refused_naming_it(key: str) -> None:
    with pytest.raises(ConfigError, match=key.split("__")[-1]):
        cr.DistilledRanker().set_params(**{key: 1})


def test_predict_before_fit_raises_not_fitted() -> None:
    ranker = cr.DistilledRanker()
    with pytest.raises(cr.NotFittedError, match="not fitted yet") as err:
        ranker.predict(None)  # type: ignore[arg-type]
    assert isinstance(err.value, ValueError) and isinstance(err.value, AttributeError)  # as scikit-learn's


def test_fit_gives_the_student_that_train_teacher_then_distill_give(
    fitted: cr.DistilledRanker, api_cfg: cr.RunConfig, api_dataset: cr.Dataset
) -> None:
    train, valid, test = api_dataset.splits()
    hard = dataclasses.replace(api_cfg.distill, alpha=0.0)
    control = cr.distill(None, train, valid, api_dataset.schema, api_cfg.student, hard, seed=7).model
    heavy = cr.train_teacher(train, valid, api_dataset.schema, api_cfg.teacher, seed=7).model
    teacher = cr.blend_teacher(heavy, control, valid, api_cfg.teacher.blend)
    assert fitted.blend_weight_ == teacher.weight
    student = cr.distill(
        teacher.model, train, valid, api_dataset.schema, api_cfg.student, api_cfg.distill, pairs=api_dataset.pairs,
        seed=7
    ).model
    np.testing.assert_array_equal(fitted.predict(test), cr.score_split(student, test))
    assert fitted.history_["student"].best_valid_gauc == pytest.approx(cr.evaluate(student, valid).gauc, abs=1e-12)


def test_fit_on_encoded_splits_equals_fit_on_the_dataset(fitted: cr.DistilledRanker, api_dataset: cr.Dataset) -> None:
    train, valid, test = api_dataset.splits()
    again = clone(fitted).fit(train, eval_set=valid, schema=api_dataset.schema, pairs=api_dataset.pairs)
    np.testing.assert_array_equal(again.predict(test), fitted.predict(test))


def test_predict_proba_is_the_sigmoid_of_predict_in_scikit_learns_layout(
    fitted: cr.DistilledRanker, api_dataset: cr.Dataset
) -> None:
    test = api_dataset.prepared.test
    proba = fitted.predict_proba(test)
    assert proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba[:, 1], expit(fitted.predict(test).astype(np.float64)), rtol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_an_invalid_section_value_fails_before_training(api_dataset: cr.Dataset) -> None:
    ranker = cr.DistilledRanker().set_params(teacher__lr=-1.0)
    with pytest.raises(ConfigError, match="teacher.lr"):
        ranker.fit(api_dataset)
    assert not hasattr(ranker, "teacher_")


def test_a_section_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="teacher must be a TeacherConfig, got dict"):
        cr.DistilledRanker(teacher={"epochs": 1}).fit(None)  # type: ignore[arg-type]


def test_fit_on_a_train_split_needs_the_eval_set_and_schema(api_dataset: cr.Dataset) -> None:
    with pytest.raises(ConfigError, match="eval_set=<valid EncodedSplit> and schema="):
        cr.DistilledRanker().fit(api_dataset.prepared.train)
