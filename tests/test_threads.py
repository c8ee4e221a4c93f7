"""Thread counts: the tuner picks the faster count, and the numbers never depend on the count."""
import numpy as np

import minimmf
from minimmf.threads import max_threads, set_threads
from minimmf.tree import leaves


def test_fastest_thread_count_picks_the_count_with_the_shortest_time(monkeypatch):
    """The count whose runs took least time is chosen (and left set)."""
    import minimmf.threads as threads
    monkeypatch.setattr(threads, "max_threads", lambda: 2)
    chosen = []
    monkeypatch.setattr(threads, "set_threads", lambda n: chosen.append(n) or n)
    durations = {1: 3.0, 2: 1.0}                    # two threads are faster here
    now = {"t": 0.0}

    def fake_perf_counter():
        return now["t"]

    def work():
        now["t"] += durations[chosen[-1]]

    monkeypatch.setattr(threads.time, "perf_counter", fake_perf_counter)
    assert threads.fastest_thread_count(work, rounds=2) == 2
    durations.update({1: 1.0, 2: 3.0})              # ...and now one thread is
    assert threads.fastest_thread_count(work, rounds=2) == 1


def test_gradients_are_reproducible_at_each_thread_count():
    """With a fixed thread count, repeated loss_and_grads calls give bit-identical results."""
    cfg = minimmf.MMfreeConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    model = minimmf.MMfreeLM.init(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, 50, (16, 65))
    for n in sorted({1, max_threads()}):
        set_threads(n)
        out = [model.loss_and_grads(ids, ids) for _ in range(2)]
        assert out[0][0] == out[1][0]
        g0, g1 = dict(leaves(out[0][1])), dict(leaves(out[1][1]))
        for k, v in g0.items():
            np.testing.assert_array_equal(v, g1[k], err_msg=f"{k} at {n} threads")
    set_threads(max_threads())
