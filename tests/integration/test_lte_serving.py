"""LTE sparse FFNs served end to end: a generated llama with routers on
layers 0 and 2 (layer 1 dense) behind the real server.

Checked:
  - greedy completions of token-id prompts equal the independent NumPy
    float64 reference tests/ref/lte_ref.py (its full forward on the growing
    sequence, one greedy step at a time), one at a time and all concurrently
    (continuous batching), with the file's tau and with --lte-threshold;
  - /metrics: the mean active-expert fraction of each routed layer (and none
    for the dense layer), the per-step union fraction histogram;
  - --lte off serves the same file densely (other tokens), bad flag values
    are refused at start-up.

Token identity without ids (the API returns texts): with "logprobs": 0 the
server reports the log-prob of each token it chose; prompts are picked so that
at every step the reference's top-1 beats its top-2 by MIN_MARGIN > 2 * TOL
and no router logit is within MIN_ROUTER of the threshold. A server token
other than the reference's would then have a log-prob at least MIN_MARGIN
below the reference's top-1, which |server - reference| < TOL rules out
(test_lte.c bounds the engine's logit error by 1e-4 on such models).
Bounded: request timeouts, a fixed number of candidate prompts.
"""
import os
import random
import subprocess
import sys
import threading

import pytest

from conftest import Server, complete, gen_model, get_metrics, slimserve_bin

np = pytest.importorskip("numpy")
if not os.environ.get("SLIMSERVE_REQUIRE_REF"):
    pytest.importorskip("gguf")

REF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ref")
sys.path.insert(0, os.path.abspath(REF_DIR))
import llama_ref  # noqa: E402
import lte_ref  # noqa: E402

VOCAB = 512
N_STEPS = 8
N_PROMPTS = 4
TOL = 0.01
MIN_MARGIN = 0.03
MIN_ROUTER = 1e-3
PREFIX = "slimserve:"


def log_softmax(x):
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def reference_greedy(path, prompt, n_steps, tau=None):
    """Greedy ids and their log-probs, or None when a step is too close."""
    seq, ids, lps = list(prompt), [], []
    for _ in range(n_steps):
        lte = lte_ref.Lte(path, tau)
        lg = llama_ref.forward(path, seq, ffn=lambda il, h, W: lte.ffn(il, h, W, llama_ref.silu))
        if lte.margin < MIN_ROUTER:
            return None
        lp = log_softmax(np.asarray(lg[-1]))
        top2 = np.argsort(-lp)[:2]
        if lp[top2[0]] - lp[top2[1]] < MIN_MARGIN:
            return None
        ids.append(int(top2[0]))
        lps.append(float(lp[top2[0]]))
        seq.append(int(top2[0]))
    return {"prompt": list(prompt), "ids": ids, "lps": lps}


@pytest.fixture(scope="module")
def lte_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("lte") / "lte-tiny.gguf"
    return gen_model(out, "spm", "--dim", "64", "--heads", "4", "--kv-heads", "2", "--ffn", "256",
                     "--layers", "3", "--vocab", str(VOCAB), "--ctx", "1024", "--seed", "21",
                     "--lte-expert-size", "32", "--lte-sparsity", "0.5", "--lte-dense-layers", "1")


def pick_cases(path, n, tau=None, seed=20241203):
    rng = random.Random(seed)
    found = []
    for _ in range(60):
        if len(found) == n:
            break
        prompt = [rng.randrange(3, VOCAB) for _ in range(3 + 4 * len(found) + rng.randrange(4))]
        ref = reference_greedy(path, prompt, N_STEPS, tau)
        if ref is not None:
            found.append(ref)
    assert len(found) == n, "too few safe prompts for this model: change the seed"
    return found


@pytest.fixture(scope="module")
def cases(lte_model):
    return pick_cases(lte_model, N_PROMPTS)


def start(model, tmp_path_factory, *args):
    return Server(model, tmp_path_factory.mktemp("lte-srv"), "--kv-cache-memory", "16MiB",
                  "--served-model-name", "lte", *args, name="lte")


@pytest.fixture(scope="module")
def srv(lte_model, tmp_path_factory):
    s = start(lte_model, tmp_path_factory)
    try:
        yield s
    finally:
        s.stop_checked()


def greedy(srv, prompt, n=N_STEPS):
    body = complete(srv, model="lte", prompt=prompt, max_tokens=n, temperature=0, logprobs=0,
                    ignore_eos=True)
    ch = body["choices"][0]
    assert body["usage"]["prompt_tokens"] == len(prompt), body
    assert body["usage"]["completion_tokens"] == n, body
    return ch["logprobs"]["token_logprobs"]


def check(case, lps, what):
    for i, want in enumerate(case["lps"]):
        assert abs(lps[i] - want) < TOL, (
            "%s: step %d: server log-prob %.6f, reference %.6f (token %d): another token was chosen"
            % (what, i, lps[i], want, case["ids"][i]))


def test_greedy_one_at_a_time_and_concurrent(srv, cases):
    for n, c in enumerate(cases):
        check(c, greedy(srv, c["prompt"]), "prompt %d alone" % n)
    results = [None] * len(cases)

    def run(i):
        results[i] = greedy(srv, cases[i]["prompt"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for n, c in enumerate(cases):
        assert results[n] is not None, "request %d did not finish" % n
        check(c, results[n], "prompt %d concurrent" % n)


def test_metrics(srv, cases):
    greedy(srv, cases[0]["prompt"], 2)
    samples, types = get_metrics(srv)
    assert types[PREFIX + "lte_active_expert_fraction"] == "gauge"
    for layer in (0, 2):
        f = samples[(PREFIX + "lte_active_expert_fraction", '{layer="%d"}' % layer)]
        assert 0.05 < f < 0.95, (layer, f)
    assert (PREFIX + "lte_active_expert_fraction", '{layer="1"}') not in samples
    assert types[PREFIX + "lte_step_union_fraction"] == "histogram"
    count = samples[(PREFIX + "lte_step_union_fraction_count", "")]
    total = samples[(PREFIX + "lte_step_union_fraction_sum", "")]
    assert count >= 2 * 2 and 0 < total <= count  # >= 2 steps x 2 routed layers


def test_threshold_flag(lte_model, tmp_path_factory):
    case = pick_cases(lte_model, 1, tau=0.3, seed=7)[0]
    s = start(lte_model, tmp_path_factory, "--lte-threshold", "0.3")
    try:
        check(case, greedy(s, case["prompt"]), "--lte-threshold 0.3")
        samples, _ = get_metrics(s)
        # tau 0.3 turns more experts on than the file's 0.5 (bias set for 50% off)
        assert samples[(PREFIX + "lte_active_expert_fraction", '{layer="0"}')] > 0.5
    finally:
        s.stop_checked()


def test_lte_off_is_dense(lte_model, cases, tmp_path_factory):
    s = start(lte_model, tmp_path_factory, "--lte", "off")
    try:
        lps = greedy(s, cases[0]["prompt"])
        assert any(abs(a - b) > TOL for a, b in zip(lps, cases[0]["lps"]))
        samples, types = get_metrics(s)
        assert PREFIX + "lte_active_expert_fraction" not in types
    finally:
        s.stop_checked()


@pytest.mark.parametrize("flag", [["--lte", "maybe"], ["--lte-threshold", "1"],
                                  ["--lte-threshold", "1.5"], ["--lte-threshold", "-0.2"]])
def test_bad_flags(lte_model, flag):
    p = subprocess.run([slimserve_bin(), "serve", "--model", lte_model, "--port", "0", *flag],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 2, (flag, p.returncode, p.stderr)
    assert b"--lte" in p.stderr, p.stderr
