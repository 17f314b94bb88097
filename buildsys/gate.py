"""The quality gate: whether a built candidate may be published, and where a rejected one is kept.

A definition's `evaluate(min_accuracy=..., max_regression=...)` sets the thresholds. The candidate's test accuracy
must reach `min_accuracy`, and must not fall more than `max_regression` below the currently published version
(the latest one, which servers load) — compared only when both were tested on the same data, i.e. their data
fingerprints agree; otherwise the numbers measure different things and the verdict says so. A rejected candidate's
staging folder (model, manifest and report) is moved to `build-out/rejected/<name>/<content hash>/`, outside the
model repository, so no server ever sees it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.dsl.specs import EvaluateSpec
from buildsys.errors import BuildsysError
from buildsys.store import OutputTree, write_json_atomic
from modelrepo import MANIFEST_FILE, Manifest


class QualityGateError(BuildsysError):
    """A candidate failed its definition's quality gate; it was kept under `build-out/rejected/`, not published.

    Example:
        `//model_defs:digits: rejected by the quality gate: test accuracy 0.6250 is below min_accuracy 0.9000; ...`
    """


@dataclass(frozen=True)
class Verdict:
    """The gate's decision: `notes` say what was compared, `failures` why the candidate was rejected (if it was)."""

    declared: bool
    accuracy: float
    baseline_version: int | None = None
    baseline_accuracy: float | None = None
    same_data: bool | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "declared": self.declared,
            "passed": self.passed,
            "accuracy": self.accuracy,
            "baseline_version": self.baseline_version,
            "baseline_accuracy": self.baseline_accuracy,
            "same_data": self.same_data,
            "notes": self.notes,
            "failures": self.failures,
        }


def accuracy_of(metrics: dict[str, Any]) -> float | None:
    """A manifest's top-1 test accuracy; versions built before reports existed recorded only Keras' metric."""
    if "accuracy" in metrics:
        return float(metrics["accuracy"])
    test = metrics.get("test", {})
    for name in ("accuracy", "sparse_categorical_accuracy"):
        if name in test:
            return float(test[name])
    return None


def judge(gate: EvaluateSpec | None, candidate: dict[str, Any], published: Manifest | None) -> Verdict:
    """Applies `gate` to the candidate's manifest (being built) against the published version's (None if none).

    The candidate's accuracy is the report's top-1 accuracy, which every build computes.
    """
    accuracy = float(candidate["metrics"]["accuracy"])
    if gate is None:
        return Verdict(declared=False, accuracy=accuracy)
    notes, failures = [], []
    if gate.min_accuracy is not None:
        if accuracy < gate.min_accuracy:
            failures.append(f"test accuracy {accuracy:.4f} is below min_accuracy {gate.min_accuracy:.4f}")
        else:
            notes.append(f"test accuracy {accuracy:.4f} reaches min_accuracy {gate.min_accuracy:.4f}")
    baseline_version = baseline_accuracy = same_data = None
    if gate.max_regression is not None:
        if published is None:
            notes.append("no published version to compare with; the regression check does not apply")
        else:
            baseline_version, baseline_accuracy = published.version, accuracy_of(published.metrics)
            same_data = published.data_fingerprint == candidate.get("data_fingerprint")
            if baseline_accuracy is None:
                notes.append(f"published version {baseline_version} records no test accuracy; not compared")
            elif not same_data:
                notes.append(
                    f"published version {baseline_version} ({baseline_accuracy:.4f}) was tested on different data "
                    f"(data fingerprint {str(published.data_fingerprint)[:12]}… vs "
                    f"{str(candidate.get('data_fingerprint'))[:12]}…), so the regression check was skipped"
                )
            else:
                drop = baseline_accuracy - accuracy
                comparison = (
                    f"test accuracy {accuracy:.4f} vs published version {baseline_version}'s {baseline_accuracy:.4f} "
                    f"on the same test data ({-drop:+.4f}; max_regression {gate.max_regression:.4f})"
                )
                (failures if drop > gate.max_regression + 1e-12 else notes).append(comparison)
    return Verdict(True, accuracy, baseline_version, baseline_accuracy, same_data, notes, failures)


# In a rejected candidate's folder: its probabilities on the test split, so that a later build whose gate it passes
# can publish it, report included, without training it again (NumPy's format, read with allow_pickle=False).
TEST_PROBABILITIES_FILE = "test_probabilities.npy"


def rejected_dir(tree: OutputTree, name: str, training_digest: str) -> Path:
    """Where a rejected candidate is kept: by the digest of what it was trained from, the gate left out
    (`CacheKey.training_digest`), so that any gate can judge it again."""
    return tree.root / "rejected" / name / training_digest


def reject(
    tree: OutputTree, staging: Path, manifest: dict[str, Any], verdict: Verdict, training_digest: str
) -> QualityGateError:
    """Moves the complete staging folder to `rejected/<name>/<training digest>/` (replacing an earlier rejection
    of the same training) and returns the one-line error for the build to raise.

    The manifest is written into the folder first and the folder appears by one rename, as a version does, so a
    rejected folder that exists is complete.
    """
    destination = rejected_dir(tree, manifest["name"], training_digest)
    write_json_atomic(staging / MANIFEST_FILE, manifest)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        stale = destination.with_name(f".{destination.name}.{os.getpid()}.old")
        os.rename(destination, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(staging, destination)
    return QualityGateError(
        f"{manifest['label']}: rejected by the quality gate: {'; '.join(verdict.failures)}; nothing was published; "
        f"the candidate and its report are in {destination}"
    )
