"""Backend selection on the command line: --backend cpu|cuda|auto, --device N.

These run without a GPU (CI, this project's machines): `auto` must fall back
to the CPU with one log line saying why, and `cuda` must refuse to start with
the CUDA reason in the message. Where a GPU is present (and the CUDA backend
is enabled with SLIMSERVE_CUDA_UNVERIFIED=1) `auto` must pick CUDA instead;
tools/gpu_check.sh covers that host.
"""
import subprocess

from conftest import Server, complete, slimserve_bin


def test_auto_falls_back_to_cpu_with_one_line(models, tmp_path):
    with Server(models["spm"], tmp_path, "--backend", "auto", "--device", "0") as s:
        body = complete(s, prompt="hello", max_tokens=4, temperature=0)
        assert body["choices"][0]["text"] is not None
        log = s.log()
    lines = [ln for ln in log.splitlines() if "backend auto:" in ln]
    assert len(lines) == 1, log
    # no GPU here: the CPU, with the reason (no driver / no device / gate / not built)
    assert "backend auto: cpu (CUDA not used:" in lines[0], lines[0]
    assert "loading model" in log and "(backend cpu)" in log, log


def test_cuda_refuses_with_the_reason(models):
    r = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"], "--port", "0",
                        "--backend", "cuda", "--device", "0"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert "cannot open backend 'cuda:0'" in err, err
    # the reason names CUDA: not compiled in, no driver/device, or not verified yet
    assert "CUDA" in err, err


def test_device_flag_is_checked(models):
    for bad in ("-1", "abc", "5000"):
        r = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"], "--device", bad],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 2 and b"--device: expected an integer in [0, 1023]" in r.stderr, (bad, r.stderr)
