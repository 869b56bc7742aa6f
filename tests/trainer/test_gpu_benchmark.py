"""benchmarks/gpu_throughput.py runs its tiny --smoke mode on CPU (the GPU run is manual)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_throughput.py"


def test_smoke_mode_measures_every_workload_for_plain_and_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_throughput", bench)  # dataclasses look it up
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    result = bench.main(["--smoke", "--repeats", "1", "--no-fp32", "--json", str(out),
                         "--variant", "padded:FINETUNE_PACKING=0"])  # fmt: skip
    assert set(result["workloads"]) == {"cls-64", "cls-256", "lora-1b", "chat-sft-1b"}
    for name, workload in result["workloads"].items():
        expected = {"plain-bf16", "ours", "ours[padded]"}
        assert set(workload["median"]) == expected, name
        for recipe, m in workload["median"].items():
            assert m["samples_per_s"] > 0 and m["tokens_per_s"] > m["samples_per_s"], recipe
    assert out.is_file()
    rows = bench.synthetic_rows(bench.FULL[2], vocab=32000)
    lengths = rows["length"]
    assert max(lengths) <= 512 and abs(sum(lengths) / len(lengths) - 231) < 1
