"""Stop takes effect inside a model pass (cud_core.stopping), and what is kept resumes exactly."""
import threading

import pytest
import torch

from cud_core.scoring import ScoreSettings, score_run
from cud_core.stopping import Interrupted, interruptible
from cud_core.store import Workspace
from tests.test_scoring import SAMPLES


def test_a_pass_is_interrupted_in_forward_and_in_backward_and_the_hooks_go_away():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x = torch.randn(2, 3)
    flag = {"stop": False}
    with interruptible(model, lambda: flag["stop"]):
        loss = model(x).sum()  # runs: the flag is down
        flag["stop"] = True
        with pytest.raises(Interrupted):
            loss.backward()  # raised by a gradient hook, before any parameter gets its gradient
        assert all(p.grad is None for p in model.parameters())
        with pytest.raises(Interrupted):
            model(x)
        # another thread using the same model is never interrupted
        out = []
        t = threading.Thread(target=lambda: out.append(model(x)))
        t.start()
        t.join()
        assert out and out[0].shape == (2, 1)
    assert model(x).shape == (2, 1)  # hooks removed on exit
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_a_scoring_batch_stopped_part_way_is_dropped_and_redone_on_resume(tiny_llama, tmp_path):
    settings = ScoreSettings(batch_size=5, steps=2, generation=False)
    reference = Workspace(tmp_path / "ref")
    done = reference.load_results(score_run(tiny_llama, SAMPLES, settings, reference, "d"))
    ws = Workspace(tmp_path / "ws")
    reads = iter(range(10 ** 9))
    run = score_run(tiny_llama, SAMPLES, settings, ws, "d", should_stop=lambda: next(reads) >= 40)
    assert ws.get_run(run)["status"] == "stopped" and ws.done_sample_ids(run) == set()
    assert score_run(tiny_llama, SAMPLES, settings, ws, "d") == run
    assert ws.load_results(run) == done
