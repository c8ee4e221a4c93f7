"""The fast twins: each layer that is hot in training or decoding, again, on the Numba kernels of ``minimmf/kernels/``.

A twin has the same name, signature and cache as its layer, and gives the same bits (``tests/test_fast_twins.py``
checks every pair; ``canary.py`` checks them again in every process before they are used). It calls the layers it
is made of through the seam (``op``), so a twin never hides an edit to another layer. Which one runs is chosen in
``minimmf/seam.py``:

    minimmf/functional.py    rmsnorm_forward / rmsnorm_backward     fast/functional.py
    minimmf/bitlinear.py     bitlinear_forward / bitlinear_backward fast/bitlinear.py
    minimmf/mlgru.py         mlgru_forward / mlgru_backward         fast/mlgru.py
    minimmf/glu.py           glu_forward / glu_backward             fast/glu.py
    minimmf/loss.py          cross_entropy_forward / _backward      fast/loss.py
    minimmf/functional.py    embedding_backward                     fast/functional.py
    minimmf/optim.py         adamw_update                           fast/optim.py
    minimmf/baseline/layers.py  swiglu_forward / swiglu_backward    fast/baseline.py
    minimmf/packed.py        packed_step (the plain one-token step) fast/decode.py

``memory.py`` is not a twin: it sets up the process a training loop runs in (freed memory kept for the next step,
no garbage-collector sweeps of long-lived objects), which changes no number.
"""
