"""The golden data: the released reference code's own outputs on a tiny model (see README.md here).

``official_A.npz`` is package data, so it is there wherever minimmf is installed::

    from minimmf import golden
    z = golden.load()                    # every array of the file (NumPy's NpzFile, no pickle)
    model = golden.model()               # its parameters as an MMfreeLM (random weights, no training)
"""
from __future__ import annotations

import io
import json
from importlib import resources

import numpy as np

FILE = "official_A.npz"


def load() -> np.lib.npyio.NpzFile:
    """Every array of ``official_A.npz``, read from the installed package."""
    data = resources.files(__name__).joinpath(FILE).read_bytes()
    return np.load(io.BytesIO(data), allow_pickle=False)


def config(z) -> dict:
    """The released ``config.json`` dict stored in the file."""
    return json.loads(str(z["config_json"]))


def state_dict(z) -> dict:
    """The parameters under the released key names (``param/<key>`` -> ``<key>``)."""
    return {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}


def model():
    """The golden model as an ``MMfreeLM``: the file's config and parameters."""
    from ..interop import from_reference
    z = load()
    return from_reference(config(z), state_dict(z))
