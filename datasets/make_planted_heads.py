"""Make datasets/demo/planted_heads.npz: q/k/v with four heads of known behaviour.

The heads are planted so that their statistics are predictable, which makes
the file a demo and a smoke test at once:

* head 0, previous token: q_i matches k_{i-1} through a sinusoidal position code;
* head 1, sink: every query matches key 0 (like [CLS]/BOS sinks);
* head 2, local: q_i matches k_i weakly, so attention spreads over neighbours;
* head 3, content: random Gaussian vectors, no positional structure.

Run ``python datasets/make_planted_heads.py`` to regenerate (deterministic).
"""

from pathlib import Path

import numpy as np

N, D, SEED = 512, 64, 20261122


def position_code(n: int, d: int) -> np.ndarray:
    """Unit-norm sinusoidal codes whose dot product peaks at equal positions."""
    pos = np.arange(n)[:, None]
    freq = 1.0 / (4.0 ** (np.arange(d // 2) / (d // 2)))
    code = np.concatenate([np.sin(pos * freq), np.cos(pos * freq)], axis=1)
    return code / np.linalg.norm(code, axis=1, keepdims=True)


def main(path: Path = Path(__file__).parent / "demo" / "planted_heads.npz") -> None:
    rng = np.random.default_rng(SEED)
    code = position_code(N + 1, D)
    noise = lambda: 0.05 * rng.standard_normal((N, D))  # noqa: E731
    sharp = 12.0 * np.sqrt(D)  # scores are scaled by 1/sqrt(D)
    q = np.empty((4, N, D))
    k = np.empty((4, N, D))
    # head 0: q_i = code(i), k_j = code(j + 1)  ->  best match j = i - 1
    q[0], k[0] = sharp * code[:N] + noise(), code[1:N + 1] + noise()
    sink = rng.standard_normal(D)
    sink /= np.linalg.norm(sink)
    q[1] = sharp * sink + noise()
    k[1] = noise()
    k[1, 0] += sink
    q[2], k[2] = 0.6 * sharp * code[:N] + noise(), code[:N] + noise()
    q[3], k[3] = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    v = rng.standard_normal((4, N, D))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, q=q.astype(np.float32), k=k.astype(np.float32), v=v.astype(np.float32),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
