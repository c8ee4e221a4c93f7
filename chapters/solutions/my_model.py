"""A MatMul-free language model written from scratch in plain NumPy: the solution to chapters/exercise.md.

This file is what a reader ends up with after the nine steps of the exercise. It does not import minimmf:
`python -m minimmf.check STEP chapters/solutions/my_model.py` compares it with the released code's numbers.
Parameters are a flat dict keyed by the released checkpoint's names ("model.layers.0.attn.i_proj.weight", ...).
"""
import numpy as np

EPS = 1e-6                       # every RMSNorm of the model, BitLinear's included


# ----------------------------------------------------------------------------- step 1: quantizers

def round_half_away(x):
    """Round to the nearest integer, ties away from zero (2.5 -> 3, -0.5 -> -1)."""
    a = np.abs(x)
    whole = np.floor(a)
    return np.sign(x) * (whole + (a - whole >= 0.5))


def weight_quant(W):
    """Absmean ternary codes of a whole matrix: (q int8 in {-1, 0, 1}, s) with W ~ q / s."""
    s = np.float32(1.0) / np.maximum(np.mean(np.abs(W)), np.float32(1e-5))
    q = np.clip(round_half_away(W * s), -1, 1).astype(np.int8)
    return q, s


def activation_quant(x):
    """Absmax 8-bit codes, one scale per row: (q int8, s (..., 1)) with x ~ q / s."""
    s = np.float32(127.0) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), np.float32(1e-5))
    q = np.clip(round_half_away(x * s), -128, 127).astype(np.int8)
    return q, s


# ----------------------------------------------------------------------------- step 2: BitLinear

def rms_norm(x, weight, eps=EPS):
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def bitlinear(x, weight, norm_weight):
    """RMSNorm, 8-bit activations, ternary weights: y = (q_x @ q_w.T) / (s_x s_w).  (..., I) -> (..., O)."""
    q_x, s_x = activation_quant(rms_norm(x, norm_weight))
    q_w, s_w = weight_quant(weight)
    y_int = q_x.astype(np.float32) @ q_w.T.astype(np.float32)     # exact: integers far below 2**24
    return y_int / (s_x * s_w)


# ----------------------------------------------------------------------------- step 3: the MLGRU

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def silu(z):
    return z * sigmoid(z)


def lower_bounds(raw):
    """Per-layer forget-gate floors from model.lower_bounds (L, H): cumsum of a softmax over layers, minus the first."""
    e = np.exp(raw - raw.max(axis=0, keepdims=True))
    a = e / e.sum(axis=0, keepdims=True)
    return np.cumsum(a, axis=0) - a[0]


def forget_gate(z_f, lower_bound):
    """f = lb + (1 - lb) sigmoid(z_f)."""
    return lower_bound + (1 - lower_bound) * sigmoid(z_f)


def recurrence(x, f, h0=None):
    """h_t = f_t h_{t-1} + x_t along axis -2 (time). Returns (h for every t, the last h)."""
    h = np.zeros_like(x[..., 0, :]) if h0 is None else h0
    out = np.empty_like(x)
    for t in range(x.shape[-2]):
        h = f[..., t, :] * h + x[..., t, :]
        out[..., t, :] = h
    return out, h


def _sub(params, prefix):
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _bl(x, p, name):
    return bitlinear(x, p[f"{name}.weight"], p[f"{name}.norm.weight"])


def mlgru(x, params, lower_bound, h0=None):
    """The token mixer on x (B, T, H). Returns (out (B, T, H), the state after the last token (B, H))."""
    f = forget_gate(_bl(x, params, "f_proj"), lower_bound)
    i = silu(_bl(x, params, "i_proj")) * (1 - f)
    h, h_last = recurrence(i, f, h0)
    o = rms_norm(_bl(x, params, "g_proj"), params["g_norm.weight"]) * silu(h)
    return _bl(o, params, "o_proj"), h_last


# ----------------------------------------------------------------------------- step 4: the GLU

def glu(x, params):
    """The channel mixer: [gate, up] = BitLinear(x); BitLinear(silu(gate) * up)."""
    gate, up = np.split(_bl(x, params, "gate_proj"), 2, axis=-1)
    return _bl(silu(gate) * up, params, "down_proj")


# ----------------------------------------------------------------------------- step 5: the block

def block(x, params, lower_bound, h0=None):
    """r = x + MLGRU(RMSNorm(x));  out = r + GLU(RMSNorm(r)).  Returns (out, the MLGRU's last state)."""
    a, h_last = mlgru(rms_norm(x, params["attn_norm.weight"]), _sub(params, "attn."), lower_bound, h0)
    r = x + a
    return r + glu(rms_norm(r, params["mlp_norm.weight"]), _sub(params, "mlp.")), h_last


# ----------------------------------------------------------------------------- step 6: the whole forward

def forward(params, input_ids):
    """Logits (B, T, V) for token ids (B, T)."""
    lbs = lower_bounds(params["model.lower_bounds"])
    h = params["model.embeddings.weight"][input_ids]
    for l in range(lbs.shape[0]):
        h, _ = block(h, _sub(params, f"model.layers.{l}."), lbs[l])
    return _bl(rms_norm(h, params["model.norm.weight"]), params, "lm_head")


# ----------------------------------------------------------------------------- step 7: the loss

def cross_entropy(logits, labels):
    """Shifted mean cross-entropy (position t predicts labels[t+1]; -100 is ignored) and d(loss)/d(logits)."""
    target = np.full_like(labels, -100)
    target[:, :-1] = labels[:, 1:]
    valid = target != -100
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    b, t = np.nonzero(valid)
    loss = -np.mean(np.log(probs[b, t, target[b, t]]))
    dlogits = probs.copy()
    dlogits[b, t, target[b, t]] -= 1.0
    dlogits[~valid] = 0.0
    return float(loss), dlogits / len(b)


# ----------------------------------------------------------------------------- step 8: every gradient
# Each *_fwd returns its output and what its *_bwd needs; the backward runs in reverse order.

def _rms_fwd(x, w):
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)
    return x * r * w, (x * r, r, w)


def _rms_bwd(dy, c):
    xhat, r, w = c
    dxhat = dy * w
    dw = np.sum((dy * xhat).reshape(-1, xhat.shape[-1]), axis=0)
    return r * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)), dw


def _bl_fwd(x, p, name):
    n, c_n = _rms_fwd(x, p[f"{name}.norm.weight"])
    q_x, s_x = activation_quant(n)
    q_w, s_w = weight_quant(p[f"{name}.weight"])
    x_q, W_q = q_x / s_x, q_w.astype(np.float32) / s_w
    return (q_x.astype(np.float32) @ q_w.T.astype(np.float32)) / (s_x * s_w), (c_n, x_q, W_q, name)


def _bl_bwd(dy, c, grads, prefix):
    """Straight-through estimator: both quantizers act as the identity."""
    c_n, x_q, W_q, name = c
    grads[f"{prefix}{name}.weight"] = dy.reshape(-1, dy.shape[-1]).T @ x_q.reshape(-1, x_q.shape[-1])
    dx, grads[f"{prefix}{name}.norm.weight"] = _rms_bwd(dy @ W_q, c_n)
    return dx


def _silu_grad(z):
    s = sigmoid(z)
    return s * (1 + z * (1 - s))


def _mlgru_fwd(x, p, lb):
    z_f, c_f = _bl_fwd(x, p, "f_proj")
    z_i, c_i = _bl_fwd(x, p, "i_proj")
    sf = sigmoid(z_f)
    f = lb + (1 - lb) * sf
    i = silu(z_i) * (1 - f)
    h, _ = recurrence(i, f)
    z_g, c_g = _bl_fwd(x, p, "g_proj")
    gn, c_gn = _rms_fwd(z_g, p["g_norm.weight"])
    out, c_o = _bl_fwd(gn * silu(h), p, "o_proj")
    return out, (c_f, c_i, c_g, c_o, c_gn, z_i, sf, f, h, gn, lb)


def _mlgru_bwd(dout, c, grads, prefix):
    c_f, c_i, c_g, c_o, c_gn, z_i, sf, f, h, gn, lb = c
    do = _bl_bwd(dout, c_o, grads, prefix)
    dgn = do * silu(h)
    dh = do * gn * _silu_grad(h)
    dz_g, grads[f"{prefix}g_norm.weight"] = _rms_bwd(dgn, c_gn)
    dx = _bl_bwd(dz_g, c_g, grads, prefix)
    di, df = np.empty_like(dh), np.empty_like(dh)            # reverse-time recurrence
    carry = np.zeros_like(dh[:, 0])
    for t in reversed(range(dh.shape[1])):
        carry = dh[:, t] + carry
        di[:, t] = carry
        df[:, t] = carry * (h[:, t - 1] if t > 0 else 0.0)
        carry = carry * f[:, t]
    dz_i = di * (1 - f) * _silu_grad(z_i)
    df = df - di * silu(z_i)
    dlb = np.sum((df * (1 - sf)).reshape(-1, sf.shape[-1]), axis=0)
    dz_f = df * (1 - lb) * sf * (1 - sf)
    return dx + _bl_bwd(dz_f, c_f, grads, prefix) + _bl_bwd(dz_i, c_i, grads, prefix), dlb


def _glu_fwd(x, p):
    gu, c_gu = _bl_fwd(x, p, "gate_proj")
    gate, up = np.split(gu, 2, axis=-1)
    out, c_d = _bl_fwd(silu(gate) * up, p, "down_proj")
    return out, (c_gu, c_d, gate, up)


def _glu_bwd(dout, c, grads, prefix):
    c_gu, c_d, gate, up = c
    dm = _bl_bwd(dout, c_d, grads, prefix)
    dgu = np.concatenate([dm * up * _silu_grad(gate), dm * silu(gate)], axis=-1)
    return _bl_bwd(dgu, c_gu, grads, prefix)


def loss_and_grads(params, input_ids, labels):
    """The mean shifted cross-entropy and its gradient for every parameter (same keys as params)."""
    raw = params["model.lower_bounds"]
    e = np.exp(raw - raw.max(axis=0, keepdims=True))
    a = e / e.sum(axis=0, keepdims=True)
    lbs = np.cumsum(a, axis=0) - a[0]
    h = params["model.embeddings.weight"][input_ids]
    caches = []
    for l in range(lbs.shape[0]):
        p = _sub(params, f"model.layers.{l}.")
        n1, c_n1 = _rms_fwd(h, p["attn_norm.weight"])
        att, c_att = _mlgru_fwd(n1, _sub(p, "attn."), lbs[l])
        r = h + att
        n2, c_n2 = _rms_fwd(r, p["mlp_norm.weight"])
        m, c_mlp = _glu_fwd(n2, _sub(p, "mlp."))
        h = r + m
        caches.append((c_n1, c_att, c_n2, c_mlp))
    hn, c_norm = _rms_fwd(h, params["model.norm.weight"])
    logits, c_head = _bl_fwd(hn, params, "lm_head")
    loss, dlogits = cross_entropy(logits, labels)

    grads = {}                                               # backward: the forward in reverse order
    dh, grads["model.norm.weight"] = _rms_bwd(_bl_bwd(dlogits, c_head, grads, ""), c_norm)
    dlbs = np.zeros_like(lbs)
    for l in reversed(range(lbs.shape[0])):
        c_n1, c_att, c_n2, c_mlp = caches[l]
        pre = f"model.layers.{l}."
        dr_norm, grads[pre + "mlp_norm.weight"] = _rms_bwd(_glu_bwd(dh, c_mlp, grads, pre + "mlp."), c_n2)
        dr = dh + dr_norm                                    # residual 2: both paths
        dn1, dlbs[l] = _mlgru_bwd(dr, c_att, grads, pre + "attn.")
        dx_norm, grads[pre + "attn_norm.weight"] = _rms_bwd(dn1, c_n1)
        dh = dr + dx_norm                                    # residual 1: both paths
    da = np.cumsum(dlbs[::-1], axis=0)[::-1].copy()          # lb_l = a_1 + ... + a_l
    da[0] = 0.0
    grads["model.lower_bounds"] = a * (da - np.sum(a * da, axis=0, keepdims=True))   # softmax backward
    dE = np.zeros_like(params["model.embeddings.weight"])
    np.add.at(dE, input_ids, dh)                             # each row gets the sum over its occurrences
    grads["model.embeddings.weight"] = dE
    return loss, grads


# ----------------------------------------------------------------------------- step 9: the packed integer step

def pack_ternary(q):
    """Ternary codes (O, I) -> uint8 (O, ceil(I/4)): input 4j+k in bits 2k, 2k+1 of byte j; 00=0, 01=+1, 10=-1."""
    O, I = q.shape
    padded = np.zeros((O, -(-I // 4) * 4), np.int8)
    padded[:, :I] = q
    codes = np.where(padded == 1, 1, np.where(padded == -1, 2, 0)).astype(np.uint8).reshape(O, -1, 4)
    return (codes[..., 0] | codes[..., 1] << 2 | codes[..., 2] << 4 | codes[..., 3] << 6).astype(np.uint8)


def ternary_matmul(packed, q_x):
    """Integer product y[n, o] = sum_i q_x[n, i] w[o, i], with only additions and subtractions of codes."""
    N, I = q_x.shape
    y = np.zeros((N, packed.shape[0]), np.int32)
    x = q_x.astype(np.int32)
    for k in range(4):                                       # the k-th input of every byte
        code = (packed >> (2 * k)) & 3                       # (O, ceil(I/4))
        cols = np.arange(k, I, 4)
        plus, minus = (code[:, :len(cols)] == 1), (code[:, :len(cols)] == 2)
        xs = x[:, None, cols]                                # (N, 1, len(cols)) against (O, len(cols))
        y += np.where(plus, xs, 0).sum(axis=-1) - np.where(minus, xs, 0).sum(axis=-1)   # add, subtract, skip
    return y


def _bl_packed(x, p, name):
    q_x, s_x = activation_quant(rms_norm(x, p[f"{name}.norm.weight"]))
    q_w, s_w = weight_quant(p[f"{name}.weight"])
    return ternary_matmul(pack_ternary(q_w), q_x).astype(np.float32) / (s_x * s_w)


def decode_step(params, token_ids, state=None):
    """One token per sequence: token_ids (B,) -> (logits (B, V), new state: one (B, H) array per layer)."""
    lbs = lower_bounds(params["model.lower_bounds"])
    h = params["model.embeddings.weight"][token_ids]         # (B, H): one token, so no time axis
    new_state = []
    for l in range(lbs.shape[0]):
        p = _sub(params, f"model.layers.{l}.")
        n1 = rms_norm(h, p["attn_norm.weight"])
        f = forget_gate(_bl_packed(n1, p, "attn.f_proj"), lbs[l])
        i = silu(_bl_packed(n1, p, "attn.i_proj")) * (1 - f)
        hid = i if state is None else f * state[l] + i
        o = rms_norm(_bl_packed(n1, p, "attn.g_proj"), p["attn.g_norm.weight"]) * silu(hid)
        r = h + _bl_packed(o, p, "attn.o_proj")
        gate, up = np.split(_bl_packed(rms_norm(r, p["mlp_norm.weight"]), p, "mlp.gate_proj"), 2, axis=-1)
        h = r + _bl_packed(silu(gate) * up, p, "mlp.down_proj")
        new_state.append(hid)
    return _bl_packed(rms_norm(h, params["model.norm.weight"]), params, "lm_head"), new_state
