"""A tiny conv net with real gradients, for checking optimizers against NumPy.

`make_model()` builds Conv2D -> BatchNormalization -> Dense, so its trainable
variables are a conv kernel [3, 3, 2, 4], BN gamma and beta, a Dense kernel
[64, 3] and a Dense bias. `run(opt, ref_update, steps)` trains
the model with `opt` on a fixed batch and, independently, a NumPy copy of the
weights with `ref_update`, each taking its gradient at its own weights, and
returns both trajectories.
"""
import numpy as np
import tensorflow as tf
import tf_keras

# Roles of the trainable variables in order; BN and biases are 'skip'.
ROLES = ('kernel', 'skip', 'skip', 'kernel', 'skip')


def make_model(seed=0):
  tf_keras.utils.set_random_seed(seed)
  model = tf_keras.Sequential([
      # No conv bias: BN would cancel it (its gradient is rounding noise).
      tf_keras.layers.Conv2D(4, 3, input_shape=(6, 6, 2), use_bias=False),
      tf_keras.layers.BatchNormalization(),
      tf_keras.layers.ReLU(),
      tf_keras.layers.Flatten(),
      tf_keras.layers.Dense(3, bias_initializer='ones'),
  ])
  return model


def batch(seed=1, n=8):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, 6, 6, 2)).astype(np.float32)
  y = rng.integers(0, 3, size=n)
  return tf.constant(x), tf.constant(y)


def _loss(model, x, y):
  logits = model(x, training=True)
  return tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
      y, logits, from_logits=True))


def run(opt, ref_update, steps=10):
  """([tf weights per step], [numpy weights per step], model).

  `ref_update(step, weights, grads, state)` returns the new NumPy weights
  (lists in ROLES order); `state` is a dict it may keep between steps.
  """
  x, y = batch()
  model = make_model()
  twin = make_model()  # evaluates gradients at the NumPy weights
  variables = model.trainable_variables
  assert [v.shape.rank for v in variables] == [4, 1, 1, 2, 1]

  @tf.function
  def train_step():
    with tf.GradientTape() as tape:
      loss = _loss(model, x, y)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))

  @tf.function
  def twin_grads():
    with tf.GradientTape() as tape:
      loss = _loss(twin, x, y)
    return tape.gradient(loss, twin.trainable_variables)

  weights = [v.numpy().astype(np.float64) for v in variables]
  state = {}
  tf_traj, np_traj = [], []
  for step in range(steps):
    train_step()
    for v, w in zip(twin.trainable_variables, weights):
      v.assign(w.astype(np.float32))
    grads = [g.numpy().astype(np.float64) for g in twin_grads()]
    assert all(np.linalg.norm(g) > 0 for g in grads)
    weights = ref_update(step, weights, grads, state)
    tf_traj.append([v.numpy() for v in variables])
    np_traj.append([w.copy() for w in weights])
  return tf_traj, np_traj, model


def assert_trajectories_close(tf_traj, np_traj, rtol=1e-5, atol=1e-6):
  for step, (got, want) in enumerate(zip(tf_traj, np_traj)):
    for i, (g, w) in enumerate(zip(got, want)):
      np.testing.assert_allclose(
          g, w, rtol=rtol, atol=atol,
          err_msg=f'step {step + 1}, variable {i} ({ROLES[i]})')
