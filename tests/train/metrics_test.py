"""The metrics logger's plain files: windows with the compiling one flagged, validation rows, run info, and JSON
lines appended without losing earlier ones, locally and on gs:// (an emulator)."""

import json

from etils import epath

from t5scale.train import metrics


def test_append_lines_keeps_earlier_lines_locally_and_on_gcs(tmp_path, gcs):
    bucket = gcs.create_bucket()
    for path in (epath.Path(tmp_path) / "m.jsonl", epath.Path(f"gs://{bucket}/run/m.jsonl")):
        metrics.append_lines(path, [{"step": 1}])
        metrics.append_lines(path, [{"step": 2}, {"step": 3}])
        assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3], path


def test_the_logger_writes_windows_eval_rows_and_run_info(tmp_path):
    import jax.numpy as jnp

    logger = metrics.MetricsLogger(str(tmp_path), flops_per_step=1.0, learning_rate_fn=lambda step: 0.1,
                                   peak_flops=None, total_steps=4, start_step=0, progress_bar=False)
    for step in (1, 2, 3, 4):
        logger.record(step, {"loss": jnp.float32(2.0), "accuracy": jnp.float32(0.5), "tokens": jnp.float32(10)})
        if step % 2 == 0:
            logger.flush(step)
    logger.write_eval(4, {"loss": 1.5, "accuracy": 0.6})
    logger.close()
    metrics.write_run_info(str(tmp_path))
    windows = [json.loads(line) for line in (tmp_path / "throughput.jsonl").open()]
    assert [(w["step"], w["steps"], w["target_tokens"], w.get("compile")) for w in windows] == \
        [(2, 2, 20.0, True), (4, 2, 20.0, None)]
    assert [json.loads(line) for line in (tmp_path / "eval.jsonl").open()] == [{"step": 4, "loss": 1.5,
                                                                                "accuracy": 0.6}]
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["device_count"] >= 1 and info["platform"] == "cpu" and info["versions"]["jax"]
