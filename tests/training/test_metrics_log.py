"""The epoch log: a progress bar in a terminal, plain lines otherwise, the curves PNG on close."""

import io
import json
import sys

from ser_jax.training import metrics_log


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(epoch: int, val_loss: float) -> dict:
    return {"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5, "val_loss": val_loss,
            "val_accuracy": 0.4 + epoch / 10, "learning_rate": 1e-3 / epoch, "seconds": 0.1,
            "samples_per_second": 100.0}


def test_terminal_gets_a_progress_bar_and_the_curves_are_drawn(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    log = metrics_log.MetricsLog(tmp_path, [record(1, 1.5)], epochs=5)  # resumed after epoch 1
    log.write(record(2, 1.2))
    log.write(record(3, 1.3))
    log.close(best_epoch=2)
    shown = terminal.getvalue()
    assert "train:" in shown and "3/5" in shown and "val_acc=0.700" in shown
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert log.curves_path == tmp_path / "evaluation" / "training_curves.png"
    assert log.curves_path.read_bytes()[:4] == b"\x89PNG"


def test_without_a_terminal_each_epoch_is_one_log_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    seen: list[str] = []
    monkeypatch.setattr(metrics_log.logging, "info",
                        lambda message, *args: seen.append(message % args))
    log = metrics_log.MetricsLog(tmp_path, [], epochs=5)
    log.write(record(1, 1.5))
    log.close(best_epoch=1)
    assert log.bar is None and sys.stderr.getvalue() == ""
    assert [line[:22] for line in seen] == ["epoch   1  loss 1.0000"]
