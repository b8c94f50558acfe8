"""The ``splash`` attention backend: same numbers as ``xla``, clear refusals.

On CPU the splash kernel runs in Pallas interpret mode, so its forward pass
and its gradients can be compared with the ``xla`` reference on small
shapes: packed segments with padding (padding queries must give zeros and
padding keys must be invisible), causality, lengths that are not whole
128-token tiles, and cross-attention where some queries see no key at all.
Everything splash cannot express must be refused with an error that names
the option, at config time when the config already knows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import attention
from lmlab.models.config import EncoderConfig, T5Config


def _segments(rows: int, length: int, cuts: list[tuple[int, int]]) -> jnp.ndarray:
  """Per row ``(a, b)``: id 1 before ``a``, id 2 on ``[a, b)``, padding (0) after."""
  seg = np.zeros((rows, length), np.int32)
  for r, (a, b) in enumerate(cuts):
    seg[r, :a], seg[r, a:b] = 1, 2
  return jnp.asarray(seg)


def _outputs_and_grads(backend, q, k, v, cotangent, **visibility):
  def attend(q, k, v):
    return attention.dot_product_attention(q, k, v, backend=backend, **visibility)
  out, pullback = jax.vjp(attend, q, k, v)
  return (out, *pullback(cotangent))


CASES = {
    # Self-attention: two packed documents then padding, length 200 (not a
    # whole tile), causal.
    "packed_causal": dict(q_len=200, kv_len=200, causal=True,
                          q_cuts=[(70, 150), (120, 200)], kv_cuts=None),
    # Cross-attention: the second row's keys have no id 2, so its id-2
    # queries see nothing and must give zeros (and no gradient).
    "cross_unseen_segment": dict(q_len=130, kv_len=150, causal=False,
                                 q_cuts=[(60, 100), (50, 130)], kv_cuts=[(80, 140), (90, 90)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_splash_matches_xla_forward_and_gradients(case):
  c = CASES[case]
  rng = np.random.RandomState(0)
  heads, head_dim = 2, 32
  draw = lambda length: jnp.asarray(rng.randn(2, length, heads, head_dim), jnp.float32)
  q, k, v = draw(c["q_len"]), draw(c["kv_len"]), draw(c["kv_len"])
  cotangent = draw(c["q_len"])
  q_seg = _segments(2, c["q_len"], c["q_cuts"])
  kv_seg = q_seg if c["kv_cuts"] is None else _segments(2, c["kv_len"], c["kv_cuts"])
  visibility = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=c["causal"])

  run = jax.jit(_outputs_and_grads, static_argnums=0, static_argnames=("causal",))
  got = run("splash", q, k, v, cotangent, **visibility)
  want = run("xla", q, k, v, cotangent, **visibility)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5, err_msg=name)
  out = np.asarray(got[0])
  assert not out[np.asarray(q_seg) == 0].any(), "padding queries must output zeros"
  if case == "cross_unseen_segment":
    assert not out[1, 50:].any() and not np.asarray(got[1])[1, 50:].any()


def test_splash_refuses_what_it_cannot_express():
  q = jnp.ones((1, 8, 2, 16))
  seg = jnp.ones((1, 8), jnp.int32)
  refused = {
      "alibi_slopes": dict(alibi_slopes=jnp.ones((2,))),
      "bias": dict(bias=jnp.zeros((1, 2, 8, 8))),
      "key_bias": dict(key_bias=jnp.zeros((1, 8))),
      "mask": dict(mask=jnp.ones((1, 1, 8, 8), bool)),
  }
  for name, kwargs in refused.items():
    with pytest.raises(ValueError, match=f"'splash'.*{name}.*'pallas' or 'xla'"):
      attention.dot_product_attention(q, q, q, backend="splash", q_segment_ids=seg,
                                      kv_segment_ids=seg, **kwargs)
  with pytest.raises(ValueError, match="'splash' attention backend has no dropout"):
    attention.dot_product_attention(q, q, q, backend="splash", dropout_rate=0.1,
                                    deterministic=False, dropout_rng=jax.random.PRNGKey(0))


def test_splash_refuses_a_gpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q = jnp.ones((1, 8, 2, 16))
  with pytest.raises(ValueError, match="TPU-only.*GPU"):
    attention.dot_product_attention(q, q, q, backend="splash")


def test_configs_refuse_splash_where_they_know_it_cannot_work():
  EncoderConfig(attention_backend="splash", position_scheme="rope")  # fine
  with pytest.raises(ValueError, match="splash.*ALiBi.*'pallas'"):
    EncoderConfig(attention_backend="splash", position_scheme="alibi")
  # BiGS has no attention, so the backend is moot there.
  EncoderConfig(attention_backend="splash", mixer="bigs")
  with pytest.raises(ValueError, match="splash.*relative position bias.*'pallas'"):
    T5Config(attention_backend="splash")
  with pytest.raises(ValueError, match="delete gate"):
    dataclasses.replace(T5Config(num_encoder_layers=2), delete_gate_layer=1,
                        attention_backend="splash")
