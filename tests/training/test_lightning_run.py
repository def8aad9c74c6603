"""Resume plumbing of a tracked Lightning run."""

from __future__ import annotations

import torch

from medmm.training.lightning_run import latest_readable_checkpoint


def test_resume_skips_a_half_written_last_checkpoint(tmp_path):
    older = tmp_path / "epoch000.ckpt"
    torch.save({"epoch": 0, "state_dict": {"w": torch.ones(3)}}, older)
    last = tmp_path / "last.ckpt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, last)
    assert latest_readable_checkpoint(tmp_path) == str(last)
    last.write_bytes(last.read_bytes()[:100])  # killed while writing
    assert latest_readable_checkpoint(tmp_path) == str(older)
    assert latest_readable_checkpoint(tmp_path / "none") is None
