"""``load_manifest`` and ``load_version``: every mistake names the file and the key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
import yaml

from tests.plugin_support import install_plugin, run_with_plugin
from xserve.errors import ManifestError, ModelLoadError, XServeError
from xserve.repository.manifest import Manifest, load_manifest
from xserve.repository.version import load_version

NAMES = ["a", "b", "c"]
FEATURES = [{"name": n} for n in NAMES]


def write_manifest(folder: Path, manifest: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest, sort_keys=False)
    (folder / "xserve.yaml").write_text(text)
    return folder


def train(
    folder: Path,
    objective: str = "binary:logistic",
    names: list[str] | None = None,
    file: str = "model.json",
) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3))
    y = (x[:, 0] > 0).astype(float) if objective.startswith("binary") else x @ [1.0, 2.0, -1.0]
    booster = xgb.train(
        {"objective": objective, "max_depth": 2},
        xgb.DMatrix(x, label=y, feature_names=names),
        num_boost_round=3,
    )
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / file))
    return folder / file


def version(tmp_path: Path, **manifest: Any) -> Path:
    """A version folder with a 3-feature binary XGBoost model and the given manifest keys."""
    folder = tmp_path / "m" / "1"
    train(folder)
    return write_manifest(folder, {"artifact": "model.json", "features": FEATURES, **manifest})


def manifest_error(folder: Path, *fragments: str, load: bool = False) -> str:
    with pytest.raises(ManifestError) as info:
        if load:
            load_version("m", "1", folder)
        else:
            load_manifest(folder)
    message = info.value.message
    assert str(folder / "xserve.yaml") in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- load_manifest ------------------------------------------------------------------


def test_a_minimal_manifest_gets_the_defaults(tmp_path: Path) -> None:
    m = load_manifest(write_manifest(tmp_path, {"artifact": "model.json"}))
    assert isinstance(m, Manifest)
    assert m.artifact == "model.json" and m.flavor is None and m.features is None
    assert m.explain.inline == "auto" and m.trusted is False and m.sha256 == {}


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(tmp_path / "xserve.yaml") in info.value.message and "missing" in info.value.message


def test_missing_artifact_key(tmp_path: Path) -> None:
    manifest_error(write_manifest(tmp_path, {"task": "regression"}), "artifact", "required")


def test_empty_artifact(tmp_path: Path) -> None:
    manifest_error(write_manifest(tmp_path, {"artifact": ""}), "artifact")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    manifest_error(write_manifest(tmp_path, {"artifact": "m.json", "featrues": []}), "featrues")


def test_unknown_feature_key(tmp_path: Path) -> None:
    features = [{"name": "a", "kind": "x"}]
    folder = write_manifest(tmp_path, {"artifact": "m.json", "features": features})
    manifest_error(folder, "features.0.kind")


def test_bad_task_value(tmp_path: Path) -> None:
    manifest_error(
        write_manifest(tmp_path, {"artifact": "m.json", "task": "classify"}),
        "task",
        "classification",
        "regression",
    )


def test_bad_feature_type(tmp_path: Path) -> None:
    features = [{"name": "a", "type": "text"}]
    folder = write_manifest(tmp_path, {"artifact": "m.json", "features": features})
    manifest_error(folder, "features.0.type")


def test_bad_inline_method(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, {"artifact": "m.json", "explain": {"inline": "magic"}})
    manifest_error(folder, "explain.inline")


def test_unknown_job_method_names_the_known_ones(tmp_path: Path) -> None:
    explain = {"methods": ["lime", "shapley"]}
    folder = write_manifest(tmp_path, {"artifact": "m.json", "explain": explain})
    message = manifest_error(folder, "explain.methods.1", "'shapley'", "known")
    for method in ("kernel_shap", "lime", "anchors"):
        assert method in message


def test_job_methods_default_to_the_built_ins(tmp_path: Path) -> None:
    m = load_manifest(write_manifest(tmp_path, {"artifact": "m.json"}))
    assert m.explain.methods == ["kernel_shap", "lime", "anchors"]


def check_plugin_job_method_is_known(folder: str) -> None:
    """In a process where the plugin distribution is installed: a manifest may name its
    method (the name is enough; the method is imported only when a job needs it)."""
    explain = {"methods": ["shapley", "lime"]}
    m = load_manifest(write_manifest(Path(folder), {"artifact": "m.json", "explain": explain}))
    assert m.explain.methods == ["shapley", "lime"]


def test_a_plugin_job_method_is_a_known_method(tmp_path: Path) -> None:
    """An installed distribution's ``xserve.explainers`` entry point."""
    site = install_plugin(
        tmp_path / "site", {"xserve.explainers": {"shapley": "example.shapley:Shapley"}}
    )
    run_with_plugin(site, f"{__name__}:check_plugin_job_method_is_known", str(tmp_path / "v"))


def test_duplicate_feature_names(tmp_path: Path) -> None:
    features = [{"name": "a"}, {"name": "b"}, {"name": "a"}]
    folder = write_manifest(tmp_path, {"artifact": "m.json", "features": features})
    manifest_error(folder, "features", "duplicate", "'a'")


def test_reason_codes_for_an_unknown_feature(tmp_path: Path) -> None:
    folder = write_manifest(
        tmp_path,
        {
            "artifact": "m.json",
            "features": FEATURES,
            "reason_codes": {"a": "A too high", "zz": "?"},
        },
    )
    message = manifest_error(folder, "reason_codes", "'zz'")
    assert "'a'" not in message


def test_adverse_class_not_in_classes(tmp_path: Path) -> None:
    folder = write_manifest(
        tmp_path, {"artifact": "m.json", "classes": ["good", "bad"], "adverse_class": "ugly"}
    )
    manifest_error(folder, "adverse_class", "'ugly'")


def test_adverse_class_in_classes_is_accepted(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, {"artifact": "m.json", "classes": [0, 1], "adverse_class": 0})
    assert load_manifest(folder).adverse_class == 0


def test_duplicate_classes(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, {"artifact": "m.json", "classes": [0, 1, 0]})
    manifest_error(folder, "classes", "distinct")


def test_invalid_yaml(tmp_path: Path) -> None:
    manifest_error(write_manifest(tmp_path, "artifact: [model.json\n"), "YAML")


@pytest.mark.parametrize("text", ["- artifact: m.json\n", "just a string\n", ""])
def test_manifest_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    manifest_error(write_manifest(tmp_path, text), "mapping")


@pytest.mark.parametrize("categories", [None, []])
def test_categorical_without_categories(tmp_path: Path, categories: list[str] | None) -> None:
    feature: dict[str, Any] = {"name": "region", "type": "categorical"}
    if categories is not None:
        feature["categories"] = categories
    folder = write_manifest(tmp_path, {"artifact": "m.json", "features": [{"name": "a"}, feature]})
    manifest_error(folder, "features.1", "categories")


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, {"artifact": "m.json", "task": "x", "colour": "red"})
    manifest_error(folder, "task", "colour")


# -- load_version --------------------------------------------------------------------


def test_a_good_version_loads(tmp_path: Path) -> None:
    folder = version(
        tmp_path, task="classification", classes=["ok", "default"], reason_codes={"a": "A too high"}
    )
    model = load_version("m", "1", folder)
    assert model.flavor == "xgboost" and model.task == "classification"
    assert model.feature_names == NAMES and model.classes == ["ok", "default"]
    assert model.digest == hashlib.sha256((folder / "model.json").read_bytes()).hexdigest()


def test_artifact_file_missing(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path / "1", {"artifact": "model.json", "features": FEATURES})
    manifest_error(folder, "artifact", "model.json", load=True)


def test_unknown_flavor(tmp_path: Path) -> None:
    manifest_error(version(tmp_path, flavor="tensorflow"), "tensorflow", load=True)


def test_flavor_that_cannot_be_inferred(tmp_path: Path) -> None:
    folder = version(tmp_path)
    (folder / "model.json").rename(folder / "model.bin")
    write_manifest(folder, {"artifact": "model.bin", "features": FEATURES})
    manifest_error(folder, "model.bin", "flavor", load=True)


def test_corrupt_artifact_is_a_load_error(tmp_path: Path) -> None:
    folder = version(tmp_path)
    (folder / "model.json").write_text('{"learner": ')
    with pytest.raises(ModelLoadError) as info:
        load_version("m", "1", folder)
    assert str(folder / "model.json") in info.value.message


def test_sha256_match_loads(tmp_path: Path) -> None:
    folder = version(tmp_path)
    digest = hashlib.sha256((folder / "model.json").read_bytes()).hexdigest()
    for written in (digest, digest.upper(), f"sha256:{digest}"):
        write_manifest(
            folder,
            {"artifact": "model.json", "features": FEATURES, "sha256": {"model.json": written}},
        )
        assert load_version("m", "1", folder).digest == digest


def test_sha256_mismatch_refuses_to_load(tmp_path: Path) -> None:
    folder = version(tmp_path, sha256={"model.json": "0" * 64})
    with pytest.raises(ModelLoadError) as info:
        load_version("m", "1", folder)
    assert "sha256" in info.value.message and str(folder / "model.json") in info.value.message


def test_sha256_of_a_tampered_artifact_refuses_to_load(tmp_path: Path) -> None:
    folder = version(tmp_path)
    digest = hashlib.sha256((folder / "model.json").read_bytes()).hexdigest()
    write_manifest(
        folder, {"artifact": "model.json", "features": FEATURES, "sha256": {"model.json": digest}}
    )
    train(folder, objective="reg:squarederror")  # replaced after the digest was written
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_version("m", "1", folder)


def test_sha256_for_a_missing_file(tmp_path: Path) -> None:
    folder = version(tmp_path, sha256={"other.bin": "0" * 64})
    manifest_error(folder, "sha256", "other.bin", load=True)


@pytest.mark.parametrize("count", [2, 4])
def test_features_count_mismatch_with_the_model(tmp_path: Path, count: int) -> None:
    folder = version(tmp_path)
    write_manifest(
        folder, {"artifact": "model.json", "features": [{"name": f"f{i}"} for i in range(count)]}
    )
    manifest_error(folder, "features", f"{count} listed", "3", load=True)


def test_features_names_differ_from_the_artifacts(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    train(folder, names=["x", "y", "z"])
    write_manifest(folder, {"artifact": "model.json", "features": FEATURES})
    manifest_error(folder, "features", "'x'", load=True)


def test_features_taken_from_the_artifact(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    train(folder, names=["x", "y", "z"])
    write_manifest(folder, {"artifact": "model.json"})
    assert load_version("m", "1", folder).feature_names == ["x", "y", "z"]


def test_features_required_when_the_artifact_has_no_names(tmp_path: Path) -> None:
    folder = version(tmp_path)
    write_manifest(folder, {"artifact": "model.json"})
    manifest_error(folder, "features", "required", load=True)


def test_task_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    train(folder, objective="reg:squarederror")
    write_manifest(
        folder, {"artifact": "model.json", "task": "classification", "features": FEATURES}
    )
    manifest_error(folder, "task", "classification", "regression", load=True)


def test_classes_count_mismatch(tmp_path: Path) -> None:
    manifest_error(version(tmp_path, classes=["a", "b", "c"]), "classes", "3 listed", load=True)


def test_background_is_read_in_feature_order(tmp_path: Path) -> None:
    folder = version(tmp_path, background="ref.csv")
    (folder / "ref.csv").write_text("c,a,b\n3,1,2\n6,4,5\n")
    model = load_version("m", "1", folder)
    assert model.background is not None
    np.testing.assert_array_equal(model.background, [[1, 2, 3], [4, 5, 6]])


def test_background_file_missing(tmp_path: Path) -> None:
    manifest_error(version(tmp_path, background="ref.csv"), "background", "ref.csv", load=True)


def test_background_missing_a_feature_column(tmp_path: Path) -> None:
    folder = version(tmp_path, background="ref.csv")
    (folder / "ref.csv").write_text("a,b\n1,2\n")
    manifest_error(folder, "background", "'c'", load=True)


def test_load_errors_are_xserve_errors_not_crashes(tmp_path: Path) -> None:
    folder = version(tmp_path, background="ref.csv")
    (folder / "ref.csv").write_text("a,b,c\n1,x,3\n")
    with pytest.raises(XServeError) as info:
        load_version("m", "1", folder)
    assert "background" in info.value.message or "ref.csv" in info.value.message
