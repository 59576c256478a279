"""Maximum-flow kernel for attention flow (Abnar & Zuidema 2020).

The flow network of one sample with ``L`` layers and ``m`` valid positions is
a layered DAG: node ``(l, k)`` for layer ``l = 0..L`` (0 = input embeddings,
``L`` = top outputs) and position ``k``, and an edge ``(l + 1, q) -> (l, p)``
with capacity ``aug[l, q, p]`` (the augmented attention of layer ``l``). The
flow value of output ``i`` and input ``j`` is the maximum flow from the source
``(L, i)`` to the sink ``(0, j)``. The other nodes of layer ``L`` (no edges in)
and of layer 0 (no edges out) cannot carry that flow and are left out.

Adjacency is implicit: node ``(l, k)`` reaches every ``(l - 1, p)`` (residual
capacity ``aug[l - 1, k, p] - flow[l - 1, k, p]``) and, through the residual
reverse edges, every ``(l + 1, q)`` with ``flow[l, q, k] > 0``. Only flows are
stored; ``flow`` has the shape of ``aug``.

The solver is Dinic's algorithm: levels from a BFS, then a depth-first search
with current-arc pointers saturates the level graph (blocking flow), until the
sink is unreachable or the flow meets ``min(out-capacity of the source,
in-capacity of the sink)``. With no flow yet the shortest paths follow the
layers, so the first phase needs no BFS. Capacities are float64; a residual
capacity ``<= EPS`` counts as saturated, so a value can fall short of the exact
maximum flow by at most ``EPS`` times the number of edges of a minimum cut, and
never exceeds it (up to rounding of the sums).

Everything a search touches is written out in the loops below rather than in
helper functions: a Numba call that passes arrays costs reference-count
updates (measured: ~70 ns a call, 10x the arithmetic).

An arc of node ``(l, k)`` is a number ``a``: ``a < m`` is the edge down to
``(l - 1, a)``, ``a >= m`` the reverse edge up to ``(l + 1, a - m)``.
"""

import numpy as np
from numba import njit, prange

EPS = 1e-12


@njit(cache=True, nogil=True)
def _bfs(aug, n_layers, m, src, snk, flow, level, queue_layer, queue_pos):
    """Levels from the source over arcs with residual > EPS; True if the sink is reached.

    Stops as soon as the sink gets a level: the nodes not yet labelled are at
    the sink's level or deeper and cannot lie on a shortest augmenting path.
    """
    level[:, :] = -1
    level[n_layers, src] = 0
    queue_layer[0] = n_layers
    queue_pos[0] = src
    head, tail = 0, 1
    while head < tail:
        layer = queue_layer[head]
        k = queue_pos[head]
        head += 1
        nxt = level[layer, k] + 1
        if layer == 1:
            if aug[0, k, snk] - flow[0, k, snk] > EPS:
                level[0, snk] = nxt
                return True
        else:
            for p in range(m):
                if level[layer - 1, p] < 0 and aug[layer - 1, k, p] - flow[layer - 1, k, p] > EPS:
                    level[layer - 1, p] = nxt
                    queue_layer[tail] = layer - 1
                    queue_pos[tail] = p
                    tail += 1
        if layer <= n_layers - 2:
            for q in range(m):
                if level[layer + 1, q] < 0 and flow[layer, q, k] > EPS:
                    level[layer + 1, q] = nxt
                    queue_layer[tail] = layer + 1
                    queue_pos[tail] = q
                    tail += 1
    return False


@njit(cache=True, nogil=True)
def _blocking_flow(aug, n_layers, m, src, snk, flow, level, ptr, path_layer, path_pos, limit):
    """Saturate the level graph by depth-first search; returns the flow added.

    Stops early once ``limit`` (an upper bound on the remaining flow) is met.
    """
    sink_level = level[0, snk]
    ptr[:, :] = 0
    added = 0.0
    top = 0
    path_layer[0] = n_layers
    path_pos[0] = src
    while True:
        layer = path_layer[top]
        k = path_pos[top]
        if layer == 0:  # reached the sink: augment along the path
            delta = np.inf
            for d in range(top):
                l0, k0, k1 = path_layer[d], path_pos[d], path_pos[d + 1]
                if path_layer[d + 1] < l0:
                    r = aug[l0 - 1, k0, k1] - flow[l0 - 1, k0, k1]
                else:
                    r = flow[l0, k1, k0]
                delta = min(delta, r)
            for d in range(top):
                l0, k0, k1 = path_layer[d], path_pos[d], path_pos[d + 1]
                if path_layer[d + 1] < l0:
                    flow[l0 - 1, k0, k1] += delta
                else:
                    flow[l0, k1, k0] -= delta
            added += delta
            if added >= limit - EPS:
                return added
            # Resume from the tail of the first saturated arc.
            first = top
            for d in range(top):
                l0, k0, k1 = path_layer[d], path_pos[d], path_pos[d + 1]
                if path_layer[d + 1] < l0:
                    r = aug[l0 - 1, k0, k1] - flow[l0 - 1, k0, k1]
                else:
                    r = flow[l0, k1, k0]
                if r <= EPS:
                    first = d
                    break
            top = first
            continue
        want = level[layer, k] + 1
        a = ptr[layer, k]
        found = -1
        if a < m:
            if layer == 1:
                if (a <= snk and want == sink_level
                        and aug[0, k, snk] - flow[0, k, snk] > EPS):
                    found = snk
            elif want < sink_level:
                for p in range(a, m):
                    if level[layer - 1, p] == want and aug[layer - 1, k, p] - flow[layer - 1, k, p] > EPS:
                        found = p
                        break
            a = m
        if found < 0 and layer <= n_layers - 2 and want < sink_level:
            for q in range(a - m, m):
                if level[layer + 1, q] == want and flow[layer, q, k] > EPS:
                    found = m + q
                    break
        if found >= 0:
            ptr[layer, k] = found
            top += 1
            if found < m:
                path_layer[top] = layer - 1
                path_pos[top] = found
            else:
                path_layer[top] = layer + 1
                path_pos[top] = found - m
        else:
            if top == 0:
                return added
            level[layer, k] = -1  # dead end for the rest of this phase
            top -= 1
            ptr[path_layer[top], path_pos[top]] += 1


@njit(cache=True, nogil=True)
def max_flow(aug, n_layers, m, src, snk, flow, level, ptr, queue_layer, queue_pos):
    """Maximum flow from output ``src`` to input ``snk`` through ``aug[:n_layers, :m, :m]``.

    Work arrays (overwritten): ``flow`` (>= n_layers, >= m, >= m), ``level``
    and ``ptr`` (>= n_layers + 1, >= m) int64, ``queue_layer`` and
    ``queue_pos`` (>= (n_layers + 1) * m) int64.
    """
    if n_layers == 1:
        return aug[0, src, snk]
    cap_out = 0.0
    cap_in = 0.0
    for k in range(m):
        cap_out += aug[n_layers - 1, src, k]
        cap_in += aug[0, k, snk]
    bound = min(cap_out, cap_in)
    if bound <= EPS:
        return 0.0
    # Zero the flows the searches read: row src on top, column snk at the bottom.
    for k in range(m):
        flow[n_layers - 1, src, k] = 0.0
        flow[0, k, snk] = 0.0
    for layer in range(1, n_layers - 1):
        for q in range(m):
            for p in range(m):
                flow[layer, q, p] = 0.0
    # First phase: with no flow yet, the level of (l, k) is its layer distance.
    for layer in range(n_layers + 1):
        for k in range(m):
            level[layer, k] = n_layers - layer if 0 < layer < n_layers else -1
    level[n_layers, src] = 0
    level[0, snk] = n_layers
    total = _blocking_flow(aug, n_layers, m, src, snk, flow, level, ptr, queue_layer, queue_pos,
                           bound)
    while total < bound - EPS:
        if not _bfs(aug, n_layers, m, src, snk, flow, level, queue_layer, queue_pos):
            break
        total += _blocking_flow(aug, n_layers, m, src, snk, flow, level, ptr, queue_layer,
                                queue_pos, bound - total)
    return total


@njit(cache=True, parallel=True)
def attention_flow(aug, lengths, sources, normalize, out):
    """Flow values of every (sample, source row) into ``out`` (S, n, n).

    ``aug`` is (S, L, n, n) float64 (augmented attention, valid on
    ``[:lengths[s], :lengths[s]]``); ``sources`` are output positions. Rows of
    ``out`` listed in ``sources`` and inside the sample's length are written
    (divided by their sum when ``normalize`` and the sum is positive); the
    caller fills the rest with NaN. Each (sample, source) pair is one
    independent task of the parallel loop.
    """
    n_samples, n_layers, n = aug.shape[0], aug.shape[1], aug.shape[2]
    n_sources = sources.shape[0]
    for task in prange(n_samples * n_sources):
        s = task // n_sources
        src = sources[task % n_sources]
        m = lengths[s]
        if src >= m:
            continue
        flow = np.empty((n_layers, m, m))
        level = np.empty((n_layers + 1, m), dtype=np.int64)
        ptr = np.empty((n_layers + 1, m), dtype=np.int64)
        queue_layer = np.empty((n_layers + 1) * m, dtype=np.int64)
        queue_pos = np.empty((n_layers + 1) * m, dtype=np.int64)
        sample = aug[s]
        total = 0.0
        for snk in range(m):
            value = max_flow(sample, n_layers, m, src, snk, flow, level, ptr, queue_layer,
                             queue_pos)
            out[s, src, snk] = value
            total += value
        if normalize and total > 0.0:
            for snk in range(m):
                out[s, src, snk] /= total
