"""What `squash submit --wait` and `squash status` print from a running stage's progress_detail."""

from __future__ import annotations

from typing import Any

from app.cli.output import human_bytes, progress_printer, progress_text


def test_a_layer_wise_stage_shows_its_counter_and_eta() -> None:
    assert progress_text({"layer": 12, "layers": 30, "eta_seconds": 250.4}) == (
        "layer 12/30 · ETA 4m10s"
    )


def test_a_training_stage_shows_step_loss_and_eta() -> None:
    detail = {"step": 40, "max_steps": 100, "loss": 1.23456, "eta_seconds": 9, "tokens": 5}
    assert progress_text(detail) == "step 40/100 · loss 1.235 · ETA 9s"


def test_nothing_to_show_is_empty() -> None:
    assert progress_text({}) == ""


def test_sizes_read_in_decimal_units() -> None:
    assert [human_bytes(n) for n in (999, 1500, 2_500_000, 7.2e9, 3e12)] == [
        "999 B",
        "1.5 KB",
        "2.5 MB",
        "7.2 GB",
        "3.0 TB",
    ]


def test_a_log_gets_a_line_each_time_the_job_moves_up_the_queue(capsys: Any) -> None:
    show = progress_printer()  # not a TTY under pytest: a line per change
    job = {"state": "queued", "stage": None, "progress": 0.0, "queue": "cpu"}
    for position in (2, 2, 1, 0):
        show({**job, "queue_position": position})
    show({**job, "state": "running", "stage": "load", "queue_position": None})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("cpu", 1)[-1].strip() for line in lines[:3]] == [
        "2 ahead in the queue",
        "1 ahead in the queue",
        "next in the queue",
    ]
    assert "running" in lines[3] and "load" in lines[3] and len(lines) == 4


def test_a_terminal_gets_a_rich_bar_left_on_screen_when_the_job_ends(
    capsys: Any, monkeypatch: Any
) -> None:
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    show = progress_printer()
    job = {"state": "running", "stage": "stage:gptq", "progress": 40.0, "queue": "cpu"}
    show({**job, "progress_detail": {"layer": 3, "layers": 30}})
    show({**job, "state": "succeeded", "stage": "done", "progress": 100.0})
    out = capsys.readouterr().out
    assert "succeeded" in out and "100%" in out and "done" in out


def test_a_job_file_reads_exponents_as_numbers() -> None:
    """YAML 1.1 reads `5e-5` as a string, which the API's strict numbers refuse."""
    from app.cli.output import read_job_file

    body = read_job_file("params: {learning_rate: 5e-5, max_steps: 1e2, name: e5, q: '5e-5'}")
    assert body["params"] == {"learning_rate": 5e-5, "max_steps": 100.0, "name": "e5", "q": "5e-5"}


def test_every_byte_count_reads_as_a_size() -> None:
    from app.cli.output import table_cell

    assert table_cell("original_checkpoint_bytes_bf16", 269_060_552) == "269.1 MB"
