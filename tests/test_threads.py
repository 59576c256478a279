"""Results must not depend on the number of Numba threads (bit for bit)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import attnkit as ak

SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, attnkit as ak
    data = np.load(sys.argv[1])
    q, k, v = data["q"], data["k"], data["v"]
    mask = ak.masks.parse(str(data["mask"]))
    out, lse = ak.attention(q, k, v, mask=mask, return_lse=True)
    weights = ak.attention_weights(q, k, mask=mask)
    st = ak.attention_stats(q, k, mask=mask, topk=3)
    np.savez(sys.argv[2], out=out, lse=lse, weights=weights, **st)
    """
)


def _run(threads: int, inputs, output):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-c", SCRIPT, str(inputs), str(output)], check=True,
                   env=env, timeout=600)
    return dict(np.load(output))


@pytest.mark.parametrize("shape, mask", [
    ((3, 2, 333, 32), "local:50 | global:0"),
    # one head, n = 768: the query tile height used to follow the thread count (3 tiles of 256
    # or 12 of 64), which switched full tiles to the partial-tile path and its rounding
    ((1, 768, 64), "local:330"),
])
def test_results_identical_for_any_thread_count(tmp_path, rng, shape, mask):
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    np.savez(tmp_path / "in.npz", q=q, k=k, v=v, mask=mask)
    runs = {t: _run(t, tmp_path / "in.npz", tmp_path / f"{t}.npz") for t in (1, 2, 4)}
    assert set(runs[1]) == {"out", "lse", "weights", "entropy", "max", "argmax", "distance",
                            "received", "topk_index", "topk_value"}
    for threads in (2, 4):
        for name in runs[1]:
            np.testing.assert_array_equal(runs[1][name], runs[threads][name],
                                          err_msg=f"{name}, 1 vs {threads} threads")
    # and the subprocess computed real attention, not something degenerate
    np.testing.assert_allclose(runs[1]["out"], ak.attention(q, k, v, mask=ak.masks.parse(mask)),
                               rtol=1e-6, atol=1e-6)


MODEL_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, attnkit as ak
    model = ak.models.MiniLM.load()
    ids = model.tokenize(["The keys to the cabinet are on the table.", "Hello world"] * 80)
    embeds, lengths = model.word_embeddings(ids)  # 160 x 12 tokens: several row blocks
    g = model.value_and_gradients(embeds, lengths)
    np.savez(sys.argv[2], value=g.value, input_gradient=g.input_gradient,
             attention_gradient=g.attention_gradient)
    """
)


def test_model_gradients_identical_for_one_and_two_threads(tmp_path):
    results = []
    for threads in (1, 2):
        out = tmp_path / f"g{threads}.npz"
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-c", MODEL_SCRIPT, "-", str(out)], check=True, env=env,
                       timeout=600)
        results.append(dict(np.load(out)))
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)
