"""train_config.profile_steps: a jax.profiler trace of the steps after the first, in MODEL_DIR for TensorBoard."""

from t5scale.train.profile import StepProfiler
from tests.train.run_training import run


def test_a_run_writes_a_trace_tensorboard_reads(tmp_path):
    result = run(str(tmp_path / "run"), 3, save_every=3, profile_steps=1)
    assert result.step == 3
    traces = list((tmp_path / "run" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_a_run_that_ends_inside_the_traced_steps_still_writes_it(tmp_path):
    profiler = StepProfiler(str(tmp_path), start_step=5, num_steps=10)
    profiler.maybe_start(5, None)  # step 5 is the first of this start: it compiles, and is not traced
    assert not (tmp_path / "plugins").exists()
    profiler.maybe_start(6, None)
    profiler.maybe_stop(7, None)  # still inside
    profiler.maybe_stop(7, None, force=True)
    assert len(list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))) == 1
