"""Results must not depend on the number of Numba threads (bit for bit)."""

import os
import subprocess
import sys
import textwrap

import numpy as np

import attnkit as ak

SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, attnkit as ak
    data = np.load(sys.argv[1])
    q, k, v = data["q"], data["k"], data["v"]
    mask = ak.masks.local(50) | ak.masks.global_tokens([0])
    out, lse = ak.attention(q, k, v, mask=mask, return_lse=True)
    st = ak.attention_stats(q, k, mask=mask, topk=3)
    np.savez(sys.argv[2], out=out, lse=lse, **st)
    """
)


def _run(threads: int, inputs, output):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-c", SCRIPT, str(inputs), str(output)], check=True,
                   env=env, timeout=600)
    return dict(np.load(output))


def test_results_identical_for_one_and_two_threads(tmp_path, rng):
    q, k, v = (rng.standard_normal((3, 2, 333, 32)).astype(np.float32) for _ in range(3))
    np.savez(tmp_path / "in.npz", q=q, k=k, v=v)
    one = _run(1, tmp_path / "in.npz", tmp_path / "one.npz")
    two = _run(2, tmp_path / "in.npz", tmp_path / "two.npz")
    assert set(one) == {"out", "lse", "entropy", "max", "argmax", "distance", "received",
                        "topk_index", "topk_value"}
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
    # and the subprocess computed real attention, not something degenerate
    np.testing.assert_allclose(
        one["out"], ak.attention(q, k, v, mask=ak.masks.local(50) | ak.masks.global_tokens([0])),
        rtol=1e-6, atol=1e-6,
    )


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
